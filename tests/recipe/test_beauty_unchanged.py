"""What a model sees on Amazon Beauty is frozen: the split, the candidate lists, the vocabulary and the
prompt, trace and answer token ids, byte for byte as the checkpoints trained on them saw them.

The expected hashes were computed with the loader of 2026-12-05 (``load_beauty``, which read only
``Beauty.txt`` and ``items.jsonl``), before the data folder readers of ``recipe.formats`` replaced it.
The same figures must come from the folder as it is and from its copy in the project's own layout
(``dgr2 data import``).
"""

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from dgr2.model.tokenizer import Vocab, build_tokenizer, vocabulary
from dgr2.recipe.data import eval_examples, load_dataset
from dgr2.recipe.formats.attribute_report import report
from dgr2.recipe.formats.export import write_layout
from dgr2.recipe.sft import TrainStream, encode

pytestmark = pytest.mark.beauty

FROZEN = {
    "catalog": "3061cd5230459b2e",  # every item's id, title, brand, category, popularity and links
    "split": "9fe92b110e4c0f56",  # users, their sequences, the negative pool
    "candidates_12345": "f23802f1d262731b",  # every test user's target and candidates, per seed
    "candidates_1": "4cc08f507ad4cd58",
    "candidates_2": "a85d28529bce1d12",
    "vocab_v4": "b4927c902727d4b0",
    "eval_tokens_v4": "7393dbd479d1c2f8",  # 200 sampled users, test and valid: prompt + trace + answer
    "train_tokens_v4": "aa7bd4980e8abacc",  # three training batches of 16 (per-user views)
    "vocab_v3": "505c7e347b164e4c",
    "eval_tokens_v3": "645ad51e5c3aa580",
    "train_tokens_v3": "0c88289ec1f2b337",
}
BEAUTY_DATA_HASH = "719e67465c580662"  # sha256 of Beauty.txt + items.jsonl, in checkpoint manifests


def _h(obj) -> str:
    return hashlib.sha256(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()[:16]


def fingerprint(data, seeds=(12345, 1, 2), prompts=("v4", "v3")) -> dict:
    out = {"catalog": _h([asdict(it) for it in data.catalog.items.values()]),
           "split": _h([list(data.sequences), list(data.sequences.values()), data.item_ids])}
    for seed in seeds:
        ex = eval_examples(data.sequences, data.item_ids, "test", 100, seed)
        out[f"candidates_{seed}"] = _h([[e.user, e.target, e.candidates] for e in ex])
    for tag in prompts:
        co_strength = tag == "v4"
        vocab = Vocab(build_tokenizer(data.catalog, co_strength=co_strength))
        out[f"vocab_{tag}"] = _h(vocabulary(data.catalog, co_strength))
        ids = [encode(vocab, data, e, 420).ids for split in ("test", "valid")
               for e in eval_examples(data.sequences, data.item_ids, split, 100, 12345, sample=200)]
        out[f"eval_tokens_{tag}"] = _h(ids)
        stream = TrainStream(vocab, data, 100, 420, seed=0)
        out[f"train_tokens_{tag}"] = _h([enc.ids for step in range(3) for enc in stream.global_batch(step, 16)])
    return out


@pytest.fixture(scope="module")
def beauty(beauty_dir):
    return load_dataset(beauty_dir)


def test_the_beauty_folder_reads_as_before(beauty):
    assert beauty.layout == "s3rec" and beauty.dropped_users == 0
    assert beauty.data_hash == BEAUTY_DATA_HASH
    assert fingerprint(beauty) == FROZEN


def test_its_copy_in_the_project_layout_reads_the_same(beauty, tmp_path):
    write_layout(tmp_path, beauty.sequences, list(beauty.catalog.items.values()))
    copy = load_dataset(tmp_path)
    assert copy.layout == "csv" and copy.dropped_users == 0
    got = fingerprint(copy, seeds=(12345,), prompts=("v4",))  # one seed and prompt: the copy's ids, not the rule
    assert got == {k: FROZEN[k] for k in got} and len(got) == 6


def test_the_attribute_rule_against_beautys_names(beauty_dir):
    """The figures docs/data.md gives for the anonymous-attribute rule, read against the names."""
    check = report(Path(beauty_dir))["checked_against_names"]
    assert (check["brand_right"], check["brand_wrong"], check["brand_missed"]) == (7454, 38, 4)
    assert check["wrong_brands_by_name"] == {"Unknown": 20, "": 18}
    assert check["category_is_leaf"] == 12012 and check["items"] == 12101
