"""Every test the docs cite as enforcing a claim exists (docs/threat-model.md, README, deploy guide)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "docs" / "threat-model.md", ROOT / "README.md", ROOT / "deploy" / "README.md"]
_CITATION = re.compile(r"tests/([a-z0-9_]+\.py)(?:::([a-z0-9_]+))?")


def test_cited_tests_exist() -> None:
    cited = 0
    for doc in DOCS:
        for match in _CITATION.finditer(doc.read_text()):
            path = ROOT / "tests" / match.group(1)
            assert path.is_file(), f"{doc.name} cites {path.name}, which does not exist"
            if match.group(2):
                assert f"def {match.group(2)}(" in path.read_text(), (
                    f"{doc.name} cites {match.group(0)}, which does not exist"
                )
            cited += 1
    assert cited > 20
