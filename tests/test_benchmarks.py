"""The benchmarks' JSON report says which command line wrote it and on which commit."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_report_opens_with_its_command_line_and_commit(tmp_path):
    out = tmp_path / "results" / "report.json"
    script = tmp_path / "bench_example.py"  # stands in for `python benchmarks/X.py --out FILE`
    script.write_text(f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
                      "from common import emit\n"
                      "emit({'seconds': 1.5}, sys.argv[2])\n")
    done = subprocess.run([sys.executable, str(script), "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert json.loads(done.stdout) == report
    assert list(report) == ["written_by", "commit", "seconds"]
    assert report["written_by"] == f"python {os.path.relpath(script, ROOT)} --out {out}"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert report["commit"].removesuffix("-dirty") == head.stdout.strip()



def test_every_command_and_benchmark_reads_the_data_directory_as_fetch_writes_it(tmp_path):
    code = ("from mindtrans.cli import build_parser; parse = build_parser().parse_args; "
            "print(parse(['evaluate', 'run']).data_dir, parse(['train', '--out', 'r']).data_dir, "
            "parse(['fetch']).data_dir)")
    env = {**os.environ, "MINDTRANS_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path)] * 3
    sources = [*ROOT.glob("mindtrans/*.py"), *ROOT.glob("benchmarks/*.py")]
    owners = [path.name for path in sources if 'add_argument("--data-dir"' in path.read_text(encoding="utf-8")]
    assert owners == ["fetch.py"]  # every other command and benchmark calls fetch.add_data_dir_argument
