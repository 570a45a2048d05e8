"""`cocker completion bash|zsh`: the scripts load in the real shells and complete cocker's
groups, commands and options through the CLI itself."""

import os
import subprocess
import sys

import pytest


def _env() -> dict:
    # the scripts call `cocker` by name: this interpreter's console script comes first
    scripts = os.path.dirname(sys.executable)
    return dict(os.environ, PATH=f"{scripts}:{os.environ.get('PATH', '')}")


def _bash_complete(words: list[str], env: dict | None = None) -> list[str]:
    script = ('source <(cocker completion bash) && COMP_WORDS=("$@") && '
              'COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )) && _cocker_completion cocker && '
              'printf "%s\\n" "${COMPREPLY[@]}"')
    p = subprocess.run(["bash", "-c", script, "bash", *words], capture_output=True, text=True,
                       timeout=60, env=dict(_env(), **(env or {})))
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_bash_completes_groups_commands_and_options():
    assert _bash_complete(["cocker", "ima"]) == ["image"]
    assert set(_bash_complete(["cocker", "image", "pu"])) == {"pull", "push"}
    assert "--all-versions" in _bash_complete(["cocker", "image", "push", "--a"])
    assert {"bash", "zsh"} <= set(_bash_complete(["cocker", "completion", ""]))


def test_zsh_script_parses_and_its_protocol_answers(cocker):
    script = cocker("completion", "zsh").stdout
    assert script.startswith("#compdef cocker")
    p = subprocess.run(["zsh", "-n"], input=script, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    # what the zsh function asks the CLI, answered by the CLI itself
    env = dict(_env(), _COCKER_COMPLETE="zsh_complete", COMP_WORDS="cocker cont", COMP_CWORD="1")
    p = subprocess.run(["cocker"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0 and "container" in p.stdout.splitlines(), p.stdout + p.stderr


@pytest.mark.parametrize("shell", ["fish", ""])
def test_unknown_shell_is_one_line_usage_error(cocker, shell):
    p = cocker("completion", shell, check=False)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "bash" in p.stderr


@pytest.mark.root
def test_bash_completes_image_refs_and_container_names(home, cocker, busybox_rootfs, tmp_path):
    cocker("image", "import", busybox_rootfs, "demo/comp:1.0")
    cocker("image", "tag", "demo/comp:1.0", "demo/comp:1.10")
    cocker("container", "create", "--name", "comp-web", "--net", "none", "demo/comp", "true")
    try:
        env = {"COCKER_HOME": home}
        assert _bash_complete(["cocker", "image", "inspect", "demo/c"], env) == [
            "demo/comp", "demo/comp:1.0", "demo/comp:1.10"]
        assert _bash_complete(["cocker", "image", "push", "demo/comp:1.1"], env) == [
            "demo/comp:1.10"]
        assert _bash_complete(["cocker", "container", "run", "demo/"], env)[0] == "demo/comp"
        assert _bash_complete(["cocker", "container", "rm", "comp-"], env) == ["comp-web"]
        # --home on the line wins over the environment
        absent = str(tmp_path / "no-store")
        assert _bash_complete(["cocker", "--home", home, "container", "start", "c"],
                              {"COCKER_HOME": absent}) == ["comp-web"]
        # a store that is not there completes nothing, quietly, and is not created
        assert _bash_complete(["cocker", "image", "rm", "d"], {"COCKER_HOME": absent}) == []
        assert _bash_complete(["cocker", "container", "stop", "c"], {"COCKER_HOME": absent}) == []
        assert not os.path.exists(absent)
    finally:
        cocker("container", "rm", "-f", "comp-web", check=False)
