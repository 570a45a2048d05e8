"""An encrypted SSH key on a terminal: cocker asks for its passphrase, as OpenSSH does, and the
push goes through with that key (the agent is not there, and it is the only key offered)."""

import os
import shutil
import subprocess
import sys

import pytest

from registry.repo.layout import LayoutRepo
from registry.repo.store import Store
from tests.support.sshd import make_test_image, sshd, tar_layer  # sshd: a fixture
from tests.support.tmux import TmuxTerminal

pytestmark = pytest.mark.root


def test_push_with_an_encrypted_key_asks_for_its_passphrase(sshd, tmp_path):
    key = str(tmp_path / "id_locked")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "open sesame", "-C", "locked",
                    "-f", key], check=True, stdin=subprocess.DEVNULL)
    with open(key + ".pub") as f, open(os.path.join(sshd.dir, "authorized_keys"), "a") as out:
        out.write(f.read())
    home = tmp_path / "user"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    shutil.copy(sshd.known_hosts, home / ".ssh" / "known_hosts")  # trust, but no other key
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env["HOME"] = str(home)
    store_home = str(tmp_path / "store")
    make_test_image(Store(store_home), "app", "1.0", [tar_layer({"hello": b"hi\n"})])
    remote = str(tmp_path / "remote")
    cmd = (f"{sys.executable} -m cocker.main --home {store_home} image push app:1.0 "
           f"--repo {sshd.url(remote)}?mode=sftp --init -i {key}")
    with TmuxTerminal(str(tmp_path), cmd, env=env) as term:
        term.wait_for(f"Enter passphrase for key '{key}'")
        term.type("open sesame\n")
        status = term.exit_status(60)
        screen = term.screen()
    assert status == 0, screen
    assert [str(r) for r in LayoutRepo(remote).list_refs()] == ["app:1.0"]
