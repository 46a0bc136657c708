"""A custom KEY_FUNCTION and its REVERSE_KEY_FUNCTION, by dotted path."""


def dashed_key(key, key_prefix, version):
    return f"{key_prefix}-{version}-{key}"


def undashed_key(key):
    return key.split("-", 2)[2]
