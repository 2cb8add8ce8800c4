"""Helpers for the drawing tests: compiled specs, and Graphviz's own reading of our DOT text."""

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from par.dsl.compiler import compile_file

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_SPECS = ROOT / "tests" / "golden" / "specs"


@pytest.fixture(scope="session")
def compiled():
    """compiled(path relative to the repository root, *defines), compiled once per session."""
    cache = {}

    def get(relative: str, *defines: str):
        key = (relative, defines)
        if key not in cache:
            cache[key] = compile_file(ROOT / relative, list(defines))
        return cache[key]

    return get


@pytest.fixture(scope="session")
def dot_binary() -> str:
    program = shutil.which("dot")
    if program is None:
        pytest.skip("Graphviz `dot` is not installed")
    return program


def run_dot(program: str, text: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([program, *args], input=text.encode("utf-8"), capture_output=True, timeout=300, check=False)


@pytest.fixture(scope="session")
def dot_run(dot_binary):
    """dot_run(dot_text, *args) -> CompletedProcess of `dot ARGS` reading the text."""
    return lambda text, *args: run_dot(dot_binary, text, *args)


@dataclass
class Layout:
    """What Graphviz read from a DOT text and where it put it (`dot -Tjson0`)."""

    nodes: dict[str, dict]  # name -> attributes
    clusters: dict[str, dict]  # name -> attributes, plus "members" (node names, nested included)
    edges: list[tuple[str, str, dict]]

    def cluster_of(self, node: str, prefix: str) -> str | None:
        """The innermost cluster named `prefix...` holding `node`."""
        found = [name for name, data in self.clusters.items() if name.startswith(prefix) and node in data["members"]]
        return min(found, key=lambda name: len(self.clusters[name]["members"]), default=None)

    def bbox(self, cluster: str) -> tuple[float, float, float, float]:
        return tuple(float(value) for value in self.clusters[cluster]["bb"].split(","))


@pytest.fixture(scope="session")
def layout(dot_binary):
    """layout(dot_text) -> Layout, failing the test on any warning from `dot`."""

    def read(text: str) -> Layout:
        done = run_dot(dot_binary, text, "-Tjson0")
        assert done.returncode == 0 and not done.stderr, done.stderr.decode()
        data = json.loads(done.stdout)
        objects = data.get("objects", [])
        names = {obj["_gvid"]: obj["name"] for obj in objects}
        nodes = {obj["name"]: obj for obj in objects if "nodes" not in obj and "subgraphs" not in obj and "bb" not in obj}
        clusters = {
            obj["name"]: dict(obj, members={names[index] for index in obj.get("nodes", [])})
            for obj in objects
            if obj["name"].startswith("cluster")
        }
        edges = [(names[edge["tail"]], names[edge["head"]], edge) for edge in data.get("edges", [])]
        return Layout(nodes, clusters, edges)

    return read
