"""``meshscale completion bash|zsh|fish``, exercised in a real bash where it completes."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from meshscale.cli.main import main


def _script(capsys: pytest.CaptureFixture[str], shell: str) -> str:
    assert main(["--socket", "/nonexistent/sock", "completion", shell]) == 0  # no daemon needed
    return capsys.readouterr().out


def _complete(script: str, *words: str) -> list[str]:
    words_arr = " ".join(f"'{w}'" for w in ("meshscale", *words))
    prog = f"{script}\nCOMP_WORDS=({words_arr}); COMP_CWORD={len(words)}; _meshscale\n"
    prog += 'printf "%s\\n" "${COMPREPLY[@]}"\n'
    out = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_bash_completes_verbs_and_their_flags(capsys: pytest.CaptureFixture[str]) -> None:
    script = _script(capsys, "bash")
    assert _complete(script, "st") == ["status"]
    assert set(_complete(script, "")) >= {"up", "status", "netcheck", "completion", "version"}
    assert _complete(script, "status", "--j") == ["--json"]
    assert _complete(script, "netcheck", "--fo") == ["--format"]
    assert "--reset" in _complete(script, "up", "--")


def test_zsh_and_fish_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    zsh = _script(capsys, "zsh")
    assert "bashcompinit" in zsh and "complete -F _meshscale meshscale" in zsh
    fish = _script(capsys, "fish")
    assert "__fish_seen_subcommand_from status' -l json" in fish
    for shell, text in (("zsh", zsh), ("fish", fish)):
        exe = shutil.which(shell)
        if exe is not None:  # syntax check where the shell is installed
            assert subprocess.run([exe, "-n"], input=text, text=True).returncode == 0


def test_unknown_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "tcsh"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'tcsh'" in err and "usage" in err
