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


def _bash_complete(words: list[str]) -> list[str]:
    script = ('source <(cocker completion bash) && COMP_WORDS=("$@") && '
              'COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )) && _cocker_completion cocker && '
              'printf "%s\\n" "${COMPREPLY[@]}"')
    p = subprocess.run(["bash", "-c", script, "bash", *words], capture_output=True, text=True,
                       timeout=60, env=_env())
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
