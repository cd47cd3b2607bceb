"""The docs' code runs as written."""

from __future__ import annotations

import re
import sys
import types

from test_engine_support import REPO


def _python_blocks(path):
    return re.findall(r"```python\n(.*?)```", (REPO / path).read_text(), flags=re.S)


def test_the_adding_a_method_example_runs_as_pasted(capsys, tmp_path):
    from mudpt.methods import _METHODS

    text = (REPO / "docs" / "METHODS.md").read_text()
    section = text[text.index("## Adding a method"):]
    code = _python_blocks("docs/METHODS.md")[[b in section for b in _python_blocks("docs/METHODS.md")].index(True)]
    module = types.ModuleType("docs_example")  # a real module, as a user's file would be (dataclasses need one)
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, "docs/METHODS.md", "exec"), module.__dict__)
        assert capsys.readouterr().out.strip() == "6144"
        from mudpt.methods import get_method_class

        cls = get_method_class("my-method")
        assert cls.label == "My method" and cls.protocols() == ("fewshot", "base2new", "xd", "dg")
        # its preset file, as the docs show it, is found by the world profile
        from mudpt.engine.config import _PRESET_DIRS, load_config, register_preset_dir

        yaml_text = re.search(r"```yaml\n(.*?)```", section, flags=re.S).group(1)
        (tmp_path / "my-method").mkdir()
        (tmp_path / "my-method" / "world.yaml").write_text(yaml_text)
        register_preset_dir(tmp_path)
        try:
            cfg = load_config(overrides={"method": "my-method"})
            assert cfg.config_name == "my-method/world" and cfg.epochs == 5 and cfg.backbone == "world-tiny"
        finally:
            _PRESET_DIRS.remove(tmp_path)
    finally:
        _METHODS.pop("my-method", None)
        sys.modules.pop(module.__name__, None)
