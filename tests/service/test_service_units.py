"""Pieces that need no server: A/B assignment, agreement measures, settings parsing, CLI flags, errors."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from scipy.stats import kendalltau

from dgr2.service.ab import ABRouter, kendall_tau, top_overlap
from dgr2.service.errors import public_message
from dgr2.service.settings import Settings, parse_split


def test_sticky_assignment_follows_the_split():
    router = ABRouter({"diffusion": 90, "ar": 10}, salt="s1")
    users = [f"user{i}" for i in range(4000)]
    first = [router.choose(u) for u in users]
    assert first == [ABRouter({"ar": 10, "diffusion": 90}, salt="s1").choose(u) for u in users]  # order-free
    share = Counter(first)["ar"] / len(users)
    assert 0.08 < share < 0.12
    other_salt = [ABRouter({"diffusion": 90, "ar": 10}, salt="s2").choose(u) for u in users]
    assert other_salt != first  # the salt reshuffles users
    assert router.choose("user1", override="ar") == "ar"
    assert ABRouter({"ar": 1, "diffusion": 0}, "s").choose("anyone") == "ar"


def test_anonymous_draws_follow_the_split():
    router = ABRouter({"diffusion": 3, "ar": 1}, salt="s", rng=random.Random(0))
    share = Counter(router.choose() for _ in range(4000))["diffusion"] / 4000
    assert 0.72 < share < 0.78


def test_shadow_sampling_rate():
    router = ABRouter({"ar": 1}, "s", shadow_rate=0.25, rng=random.Random(1))
    picks = [router.shadow_of("ar") for _ in range(4000)]
    assert set(picks) == {None, "diffusion"} and 0.22 < picks.count("diffusion") / 4000 < 0.28
    assert ABRouter({"ar": 1}, "s", shadow_rate=0.0).shadow_of("ar") is None


def test_agreement_measures():
    rng = random.Random(0)
    for k in (1, 2, 5, 30):
        a = list(range(k))
        b = a[:]
        rng.shuffle(b)
        assert kendall_tau(a, a) == 1.0
        if k > 1:
            assert kendall_tau(a, a[::-1]) == -1.0
            # positions of each item in both orders, as scipy wants them
            pa, pb = [a.index(i) for i in range(k)], [b.index(i) for i in range(k)]
            assert kendall_tau(a, b) == pytest.approx(kendalltau(pa, pb).statistic)
    assert top_overlap(list(range(20)), list(range(20))[::-1]) == 0.0
    assert top_overlap([3, 1, 2], [2, 3, 1]) == 1.0
    assert top_overlap(list(range(12)), [1, 0, 2, 3, 4, 5, 6, 7, 8, 11, 9, 10]) == 0.9


def test_split_parsing_and_settings(monkeypatch):
    assert parse_split("diffusion=90, ar=10") == {"diffusion": 90.0, "ar": 10.0}
    for bad in ("beam=1", "ar", "ar=x", "ar=0", "ar=-1,diffusion=2"):
        with pytest.raises(ValueError):
            parse_split(bad)
    monkeypatch.setenv("DGR2_AB_SPLIT", "ar=1")
    monkeypatch.setenv("DGR2_PORT", "9001")
    monkeypatch.setenv("DGR2_ADMIN_TOKEN", "")
    s = Settings()
    assert s.ab_split == {"ar": 1.0} and s.port == 9001 and s.admin_token is None
    assert Settings(port=9002).port == 9002  # explicit beats env
    assert "hunter2" not in repr(Settings(admin_token="hunter2"))


def test_public_message_strips_paths():
    msg = public_message("cannot open /srv/models/beauty/v1/model.safetensors: 'C:\\x\\y\\z.bin' denied")
    assert "/srv" not in msg and "model.safetensors" in msg and "\\x" not in msg
