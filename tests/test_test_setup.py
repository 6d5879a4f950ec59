"""`make test` on a machine without a browser: the set-up says what to install, and the skips
are counted with their reason in the summary, never silent."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env_without_browser() -> dict:
    env = {key: value for key, value in os.environ.items() if key != "MAILSENDER_STRICT_TESTS"}
    env["MAILSENDER_CHROMIUM"] = "/nonexistent/chromium"
    return env


def test_prerequisites_say_in_one_line_what_to_install():
    result = subprocess.run(
        [str(ROOT / "tools" / "test-prerequisites")], env=_env_without_browser(),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0
    lines = [line for line in result.stdout.splitlines() if "Chromium" in line]
    assert len(lines) == 1
    assert "apt-get install chromium" in lines[0] and "/nonexistent/chromium" in lines[0]


def test_browser_tests_skipped_for_a_missing_browser_are_counted_with_their_reason(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--output", str(tmp_path),
         "tests/browser/test_login.py"],
        cwd=ROOT, env=_env_without_browser(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    summary = [line for line in result.stdout.splitlines() if " skipped: " in line]
    assert len(summary) == 1, result.stdout[-2000:]
    count = int(summary[0].split(" skipped: ")[0])
    assert count >= 1 and "no Chromium at /nonexistent/chromium" in summary[0]
    assert f"{count} skipped" in result.stdout.splitlines()[-1]


def test_every_test_on_a_database_is_collected_for_sqlite_and_for_postgresql():
    env = {key: value for key, value in os.environ.items() if key != "MAILSENDER_TEST_DATABASES"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
         "tests/test_auth.py", "tests/test_database.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    ids = [line for line in result.stdout.splitlines() if "::" in line]
    on = {backend: {test.replace(f"[{backend}]", "[]") for test in ids if f"[{backend}]" in test}
          for backend in ("sqlite", "postgresql")}
    # test_auth.py uses the app throughout, and so runs on both; WAL and checkpoints are SQLite's alone.
    auth = {test for test in on["sqlite"] if test.startswith("tests/test_auth.py")}
    assert auth and auth <= on["postgresql"]
    sqlite_only = {test for test in on["sqlite"] if "checkpoint_copies" in test}
    assert sqlite_only and not sqlite_only & on["postgresql"]
