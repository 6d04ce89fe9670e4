"""The set-up files agree with each other, and the environment has the working torch pair."""
import pathlib
import re
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {_norm(r) for r in reqs}


def _environment_pip() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = [d for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml: expected one pip section"
    return [_norm(r) for r in pip[0]["pip"]]


def _constraints() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name = re.split(r"[=!<>~]", line, maxsplit=1)[0]
            out[name.lower()] = _norm(line)
    return out


def test_environment_yml_lists_every_pyproject_requirement():
    env = _environment_pip()
    constraints = _constraints()
    for req in _pyproject_requirements():
        name = re.split(r"[=!<>~\[]", req, maxsplit=1)[0]
        if name in constraints:  # torch, torchvision: pinned exactly instead
            assert constraints[name] in env, f"environment.yml: expected the pin {constraints[name]!r}"
        else:
            assert req in env, f"environment.yml: missing {req!r} (from pyproject.toml)"


def test_environment_yml_has_no_extra_packages():
    known = {re.split(r"[=!<>~\[]", r, maxsplit=1)[0] for r in _pyproject_requirements()}
    for req in _environment_pip():
        if req.startswith("-e"):
            continue
        name = re.split(r"[=!<>~\[]", req, maxsplit=1)[0]
        assert name in known, f"environment.yml lists {req!r}, which pyproject.toml does not"


def test_torch_pair_is_pinned_and_importable():
    import torch
    import torchvision

    constraints = _constraints()
    assert constraints["torch"] == "torch==2.13.0,!=2.13.0+cpu"
    assert constraints["torchvision"] == "torchvision==0.28.0"
    assert torch.__version__.split("+")[0] == "2.13.0" and not torch.__version__.endswith("+cpu")
    assert torchvision.__version__.split("+")[0] == "0.28.0"
    keep = torchvision.ops.nms(torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2.1]]), torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]
