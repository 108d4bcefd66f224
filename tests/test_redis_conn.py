"""Redis across boxes (issue 13): credentials from settings or a 0600 file, TLS with the
server's certificate checked, and the refusal of a LAN Redis without a password. Against a
real redis-server with TLS and `requirepass` on a private port."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from appliance.queue import Broker
from appliance.redis_conn import redis_url
from appliance.settings import Settings, load_settings
from tests.queue_helpers import REPO, free_port, wait_for

PASSWORD = "s3cret:/@pw"  # characters a URL must quote


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """(port, CA file) of a redis-server speaking TLS only, with a password."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl(1) is needed to make the test's certificates")
    home = tmp_path_factory.mktemp("tls-redis")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "2", "-subj", "/CN=test-ca", cwd=home)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
             "-subj", "/CN=127.0.0.1", cwd=home)  # fmt: skip
    (home / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "srv.crt", "-days", "2", "-extfile", "ext", cwd=home)  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "srv.crt", "--tls-key-file", "srv.key", "--tls-ca-cert-file",
         "ca.crt", "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", ""],
        cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def answers() -> bool:
        try:
            client = redis.Redis(
                "127.0.0.1", port, ssl=True, ssl_ca_certs=str(home / "ca.crt"), password=PASSWORD
            )
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_for(answers, 10, "redis-server with TLS")
        yield port, home / "ca.crt"
    finally:
        proc.terminate()
        proc.wait(10)


def _settings(tmp_path: Path, **values: object) -> Settings:
    return load_settings(config_file=tmp_path / "none.toml", data_dir=tmp_path, **values)


def test_rediss_with_password_file_reaches_redis_and_celery(
    tls_redis: tuple[int, Path], tmp_path: Path
) -> None:
    port, ca = tls_redis
    secret = tmp_path / "redis.password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    settings = _settings(
        tmp_path,
        redis_url=f"rediss://127.0.0.1:{port}/0",
        redis_password_file=secret,
        redis_ca_file=ca,
    )
    broker = Broker(settings)
    assert broker.redis.ping()
    with broker.app.connection_for_write() as conn:  # the Celery side, through kombu
        conn.ensure_connection(max_retries=1)
    assert PASSWORD not in settings.redis_url and "s3cret" in redis_url(settings)


def test_rediss_checks_the_server_certificate(tls_redis: tuple[int, Path], tmp_path: Path) -> None:
    port, _ = tls_redis  # no CA given: the test CA is not in the system's trust store
    settings = _settings(
        tmp_path, redis_url=f"rediss://127.0.0.1:{port}/0", redis_password=PASSWORD
    )
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        Broker(settings).redis.ping()


def test_wrong_password_is_refused(tls_redis: tuple[int, Path], tmp_path: Path) -> None:
    port, ca = tls_redis
    settings = _settings(
        tmp_path, redis_url=f"rediss://127.0.0.1:{port}/0", redis_password="nope", redis_ca_file=ca
    )
    with pytest.raises(redis.AuthenticationError):
        Broker(settings).redis.ping()


@pytest.mark.parametrize("command", [["worker", "--devices", "0"], ["web"]])
def test_network_redis_without_credentials_is_refused(command: list[str], tmp_path: Path) -> None:
    """One line on stderr, exit 78 (EX_CONFIG: a restart would not help)."""
    env = {
        **os.environ,
        "APPLIANCE_CONFIG_FILE": str(tmp_path / "none.toml"),
        "APPLIANCE_DATA_DIR": str(tmp_path / "data"),
        "APPLIANCE_REDIS_URL": "redis://10.231.0.9:6379/0",
    }
    out = subprocess.run(
        [sys.executable, "-m", "cli", *command],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 78
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to use Redis at 10.231.0.9:6379" in lines[0], out.stderr


def test_loopback_or_password_is_accepted(tmp_path: Path) -> None:
    from appliance.redis_conn import RedisUnsafe, require_credentials

    require_credentials(_settings(tmp_path, redis_url="redis://127.0.0.1:6379/0"))
    require_credentials(_settings(tmp_path, redis_url="redis://[::1]:6379/0"))
    require_credentials(
        _settings(tmp_path, redis_url="redis://10.0.0.5:6379/0", redis_password="x")
    )
    with pytest.raises(RedisUnsafe):
        require_credentials(_settings(tmp_path, redis_url="rediss://head.local:6380/0"))
