"""``dgr2_ab_split``: the split each decoder gets, which the no-traffic alert and the dashboard read."""

from prometheus_client.parser import text_string_to_metric_families

from dgr2.service.app import create_app
from dgr2.service.settings import Settings


def split_samples(app) -> dict[str, float]:
    families = text_string_to_metric_families(app.state.metrics.render().decode())
    return {s.labels["decoder"]: s.value for f in families if f.name == "dgr2_ab_split" for s in f.samples}


def test_split_is_exported_as_shares():
    app = create_app(Settings(model="m", ab_split="diffusion=90,ar=10"))  # nothing loads before the lifespan
    assert split_samples(app) == {"ar": 0.1, "diffusion": 0.9}


def test_decoder_out_of_the_split_is_zero():
    app = create_app(Settings(model="m", ab_split="ar=1,diffusion=0"))
    assert split_samples(app) == {"ar": 1.0, "diffusion": 0.0}
