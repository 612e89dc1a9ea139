import pytest

import threadko
from threadko import config
from threadko.configuration import Config


def test_global_config_is_exported_as_threadko_config():
    import threadko.configuration
    assert threadko.config is threadko.configuration.config
    assert isinstance(threadko.config, Config)


def test_setup_replaces_the_contents():
    cfg = Config({'old': 1})
    cfg.setup({'new': 2})
    assert dict(cfg) == {'new': 2}


def test_patch_as_context_manager_updates_and_restores():
    with config.patch({'max_workers': 1, 'NESTED': {'a': 1}}):
        assert config['max_workers'] == 1
        config['NESTED']['a'] = 2  # mutation inside is undone too
        with config.patch({'max_workers': 2}):
            assert config['max_workers'] == 2
            assert config['NESTED'] == {'a': 2}
        assert config['max_workers'] == 1
    assert 'max_workers' not in config
    assert 'NESTED' not in config


def test_patch_with_clear_replaces_everything_temporarily():
    with config.patch({'keep': True}):
        with config.patch({'only': 1}, clear=True):
            assert dict(config) == {'only': 1}
        assert dict(config) == {'keep': True}


def test_patch_restores_when_the_block_raises():
    with pytest.raises(ValueError):
        with config.patch({'temporary': 1}):
            raise ValueError()
    assert 'temporary' not in config


def test_patch_as_decorator():
    @config.patch({'decorated': 'yes'})
    def read():
        return config['decorated']

    assert read() == 'yes'
    assert read() == 'yes'  # reusable
    assert 'decorated' not in config
