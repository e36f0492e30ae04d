from __future__ import annotations

from tenants.keys import PREFIX_LENGTH, generate_key, hash_key, key_matches, parse_prefix


def test_generated_keys_are_unique_high_entropy_and_parse() -> None:
    keys = [generate_key() for _ in range(2000)]
    assert len({k.secret for k in keys}) == 2000
    assert len({k.prefix for k in keys}) == 2000
    for k in keys[:50]:
        assert k.secret.startswith("mk_live_")
        assert parse_prefix(k.secret) == k.prefix
        assert len(k.prefix) == PREFIX_LENGTH


def test_malformed_keys_have_no_prefix() -> None:
    k = generate_key()
    for bad in [
        "",
        "mk_live_",
        k.secret + "x",
        k.secret[:-1],
        "mk_test_" + k.secret[8:],
        k.secret.replace("_", "-"),
        k.secret[:-1] + "é",
        "x" * 500,
    ]:
        assert parse_prefix(bad) is None, bad


def test_hash_is_keyed_and_compared_exactly() -> None:
    k = generate_key()
    h = k.hash("server-secret")
    assert h == hash_key("server-secret", k.secret)
    assert h != hash_key("other-secret", k.secret)
    assert k.secret not in h
    assert key_matches("server-secret", k.secret, h)
    flipped = k.secret[:-1] + ("0" if k.secret[-1] != "0" else "1")
    assert not key_matches("server-secret", flipped, h)
