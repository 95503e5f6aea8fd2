"""Pieces that need no server: A/B assignment, agreement measures, settings parsing, CLI flags, errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
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


# Written down once from sha256("test-salt:<user id>"): a user keeps their decoder across restarts, replicas
# and releases, so a change of hash function, of how the salt and id are joined, or of the bucket order fails here.
PINNED_50_50 = {"user-1": "diffusion", "user-2": "ar", "user-3": "diffusion", "user-42": "ar", "alice": "ar",
                "bob": "diffusion", "42": "ar", "u-7": "diffusion"}
# (salt, user, bucket in [0, 1) to four decimals): the user is on "ar" exactly when ar's share exceeds it
PINNED_BUCKETS = [("test-salt", "user-42", 0.1519), ("test-salt", "alice", 0.4513), ("other-salt", "alice", 0.3684)]
_CHOOSE = """
import json, sys
from dgr2.service.ab import ABRouter
router = ABRouter({"diffusion": 50, "ar": 50}, salt="test-salt")
print(json.dumps({u: router.choose(u) for u in sys.argv[1:]}))
"""


def test_sticky_assignment_is_pinned_across_processes():
    router = ABRouter({"ar": 50, "diffusion": 50}, salt="test-salt")
    assert {u: router.choose(u) for u in PINNED_50_50} == PINNED_50_50
    for salt, user, bucket in PINNED_BUCKETS:
        below = ABRouter({"ar": bucket, "diffusion": 1 - bucket}, salt=salt)  # ar's share ends below the bucket
        above = ABRouter({"ar": bucket + 1e-4, "diffusion": 1 - bucket - 1e-4}, salt=salt)
        assert (below.choose(user), above.choose(user)) == ("diffusion", "ar"), (salt, user, bucket)
    for hash_seed in ("1", "2"):  # fresh interpreters with other str hashes: nothing may depend on hash()
        out = subprocess.run([sys.executable, "-c", _CHOOSE, *PINNED_50_50], capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": hash_seed}, timeout=120, check=True)
        assert json.loads(out.stdout) == PINNED_50_50


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
