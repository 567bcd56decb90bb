"""docs/topology.md is generated from the schema and current; every schema field is described;
the relative links of README.md and docs/*.md lead to files and headings that exist."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "topology.md"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_topology_docs", ROOT / "scripts" / "gen_topology_docs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def test_topology_doc_is_regenerated():
    assert DOC.read_text() == gen.render(), (
        "docs/topology.md is stale: run `python scripts/gen_topology_docs.py`"
    )
    assert gen.main(["--check"]) == 0


def test_check_fails_on_a_stale_file_and_writing_fixes_it(tmp_path, capsys):
    out = tmp_path / "topology.md"
    out.write_text("# stale\n")
    assert gen.main(["--check", "--output", str(out)]) == 1
    assert "stale" in capsys.readouterr().err
    assert out.read_text() == "# stale\n"  # --check writes nothing
    assert gen.main(["--output", str(out)]) == 0
    assert gen.main(["--check", "--output", str(out)]) == 0


def _sections() -> list[tuple[str, str, type, list]]:
    return list(gen.sections(gen.Topology, "", ""))


def test_every_leaf_field_has_a_description():
    missing = [
        f"{path}.{name}" if path else name
        for path, _, _, leaves in _sections()
        for name, field in leaves
        if not (field.description or "").strip()
    ]
    assert not missing, f"schema fields without Field(description=...): {missing}"


def test_every_section_has_a_docstring():
    missing = [path for path, _, model, _ in _sections() if not (model.__doc__ or "").strip()]
    assert not missing, f"schema models without a docstring: {missing}"


def test_the_doc_names_every_leaf_key_and_env_override():
    text = DOC.read_text()
    for path, _, _, leaves in _sections():
        for name, _ in leaves:
            assert f"`{gen.key(path, name)}`" in text
    for var in gen.ENV_OVERRIDES:
        assert f"`{var}`" in text


# --- relative links -------------------------------------------------------------------------

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a file's headings (lower case, punctuation dropped, spaces to
    hyphens, repeats numbered)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", markdown)):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(markdown: str) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", markdown))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("source", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(source):
    broken = []
    for target in relative_links(source.read_text()):
        file_part, _, anchor = target.partition("#")
        path = (source.parent / file_part).resolve() if file_part else source
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in github_anchors(path.read_text()):
            broken.append(f"{target}: no heading with this anchor")
    assert not broken, f"{source.relative_to(ROOT)}: {broken}"


def test_the_link_checker_sees_links_and_anchors():
    text = "# A `b` c's\n\n## A b cs\n\n```\n# not a heading [x](nope.md)\n```\n[`x[]`](y.md#z) ![p](q.png)"
    assert github_anchors(text) == {"a-b-cs", "a-b-cs-1"}
    assert relative_links(text) == ["y.md#z", "q.png"]
