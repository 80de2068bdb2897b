from services.ratelimit.cache import OverLimitCache


def test_entries_expire_at_their_reset_time() -> None:
    cache = OverLimitCache(10)
    cache.put("k", 2.0, now=100.0)
    assert cache.get("k", now=101.0).retry_after_s == 1.0
    assert cache.get("k", now=102.0) is None
    assert len(cache) == 0


def test_bounded_lru_evicts_the_oldest() -> None:
    cache = OverLimitCache(2)
    for i, key in enumerate("abc"):
        cache.put(key, 10.0, now=float(i))
    assert cache.get("a", now=3.0) is None
    assert cache.get("b", now=3.0) and cache.get("c", now=3.0)


def test_disabled_cache_stores_nothing() -> None:
    cache = OverLimitCache(0)
    cache.put("k", 5.0)
    assert not cache.enabled and cache.get("k") is None
