"""The client kit's examples in README.md and docs/client.md stay in step with the code:
they parse, import only names the kit exports, and call ``publish`` and ``get`` with
keyword arguments those methods take. (They are not run: they need model weights, a
web framework and a broker.)"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import worker.client
from worker.client import FusedResults, PredictionPublisher

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", REPO / "docs" / "client.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def blocks() -> list[tuple[str, str]]:
    out = []
    for path in DOCS:
        for i, code in enumerate(BLOCK.findall(path.read_text("utf-8"))):
            out.append((f"{path.name}#{i}", code))
    return out


BLOCKS = blocks()
ACCEPTS = {
    "publish": set(inspect.signature(PredictionPublisher.publish).parameters) - {"self"},
    "get": set(inspect.signature(FusedResults.get).parameters) - {"self"},
}


def parse(code: str) -> ast.Module:
    # Fragments with "..." as a placeholder statement parse as they are.
    return ast.parse(code)


def test_the_docs_have_client_examples() -> None:
    """README and docs/client.md show python examples that use the kit."""
    assert sum("worker.client" in code for _, code in BLOCKS) >= 3


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_an_example_parses_and_uses_real_names(where: str, code: str) -> None:
    """Each example parses, imports only what worker.client exports, and passes
    publish/get only keyword arguments they accept."""
    tree = parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "worker.client":
            for alias in node.names:
                assert alias.name in worker.client.__all__, (where, alias.name)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ACCEPTS
        ):
            for kw in node.keywords:
                assert kw.arg in ACCEPTS[node.func.attr], (where, node.func.attr, kw.arg)
