import re

import pytest
from helpers import ROOT

from vlmforge.common.errors import ConfigError
from vlmforge.pipeline.config import CurateConfig, load_config


def test_default_recipe_loads_and_matches_code_defaults():
    cfg = load_config(ROOT / "configs/curate/default.yaml")
    assert cfg.language.languages == ["en"]
    assert cfg.image.min_side == CurateConfig().image.min_side


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("language:\n  min_scroe: 0.3\n")
    with pytest.raises(ConfigError, match=r"language\.min_scroe: unknown key"):
        load_config(p)


def test_bad_value_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("image:\n  min_side: -4\n")
    with pytest.raises(ConfigError, match=r"image\.min_side"):
        load_config(p)


def test_cross_field_check():
    with pytest.raises(ConfigError, match="min_side"):
        load_config(None, ["image.min_side=500", "image.max_side=100"])


def test_set_overrides_parse_yaml_values():
    cfg = load_config(None, ["language.languages=[en, de]", "caption.max_chars=99", "output.path=/x"])
    assert cfg.language.languages == ["en", "de"]
    assert cfg.caption.max_chars == 99
    assert cfg.output.path == "/x"


def test_set_needs_key_value():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["language.min_score"])


def test_recipe_hash_ignores_paths_but_not_thresholds():
    a = load_config(None, ["output.path=/a"])
    b = load_config(None, ["output.path=/b", "ray.num_cpus=1"])
    c = load_config(None, ["language.min_score=0.9"])
    assert a.recipe_hash() == b.recipe_hash()
    assert a.recipe_hash() != c.recipe_hash()


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_readme_config_table_lists_every_key():
    """Every field of every section appears in its row of the README's configuration table."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("| `") and "` | " in line:
            section, keys = line[3:].split("` | ", 1)
            rows[section] = keys
    missing = [
        f"{section}.{key}"
        for section, field in CurateConfig.model_fields.items()
        for key in field.annotation.model_fields
        if not re.search(rf"\b{key}\b", rows.get(section, ""))
    ]
    assert not missing, f"the README's config table lacks {missing}"
