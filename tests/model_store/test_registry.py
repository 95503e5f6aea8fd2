"""The store listing skips what is not a model."""

def test_the_shipped_store_lists_models_not_its_package_files():
    from dgr2.model_store import DEFAULT_ROOT, ModelStore

    names = ModelStore(DEFAULT_ROOT).names()
    assert names and all((DEFAULT_ROOT / n).is_dir() for n in names)
