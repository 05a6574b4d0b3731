"""The batch-scheduler recipes in examples/: what can be checked without their clusters.

The Kubernetes Job is validated against the Kubernetes API schema (kubernetes-validate,
strict: unknown fields fail), the GitHub Actions workflow against the workflow schema that
check-jsonschema carries, the Slurm script by bash's parser (tests/test_slurm.py submits it to a
real Slurm). In each, every hpsearch command line is parsed by hpsearch's own command-line
parser, and the spec it names must exist and validate. Not checked here: pulling the image,
scheduling pods, or running the workflow on GitHub's runners."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml

from hpsearch.cli import app
from hpsearch.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def tool(name: str) -> str:
    """A console script installed beside this Python (the dev extra brings them)."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is missing: pip install -e '.[dev]'"
    return str(path)


def parse_command(words: list[str]) -> dict:
    """`hpsearch SUBCOMMAND ...` parsed as the CLI would, without running it: unknown
    options, missing values and bad choices fail here. Returns the parsed parameters."""
    assert words[0] == "hpsearch", words
    command = typer.main.get_command(app)
    sub = command.get_command(None, words[1])
    assert sub is not None, f"no hpsearch command {words[1]!r}"
    with sub.make_context(words[1], list(words[2:])) as context:
        return context.params


def check_spec(params: dict) -> None:
    spec = ROOT / params["spec"]
    assert spec.exists(), f"the recipe names {params['spec']}, which is not in the repository"
    load_spec(spec)


# --- Kubernetes -------------------------------------------------------------------------------


def test_the_kubernetes_job_is_a_valid_job(tmp_path):
    manifest = EXAMPLES / "kubernetes-job.yaml"
    done = subprocess.run(
        [tool("kubernetes-validate"), "--strict", str(manifest)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed" in done.stdout


def test_the_strict_check_catches_a_misspelt_field(tmp_path):
    # the check can fail: the same Job with one field misspelt is refused
    broken = tmp_path / "job.yaml"
    text = (EXAMPLES / "kubernetes-job.yaml").read_text()
    broken.write_text(text.replace("parallelism:", "paralelism:"))
    done = subprocess.run(
        [tool("kubernetes-validate"), "--strict", str(broken)], capture_output=True, text=True
    )
    assert done.returncode != 0 and "paralelism" in done.stdout + done.stderr


def test_the_kubernetes_pods_run_a_valid_hpsearch_command():
    job = yaml.safe_load((EXAMPLES / "kubernetes-job.yaml").read_text())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    params = parse_command(container["command"])
    check_spec(params)
    assert params["storage"].startswith("postgresql") and params["study"]
    # the runs folder is a mounted volume, so run folders outlive the pod's own file system
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert params["runs_dir"] is not None and str(params["runs_dir"]) in mounts
    # the password comes from a secret, never the command line
    assert "PGPASSWORD" in {e["name"] for e in container["env"]}
    assert ":" not in params["storage"].split("@")[0].split("//")[1]


# --- GitHub Actions ---------------------------------------------------------------------------


def test_the_github_workflow_is_valid():
    done = subprocess.run(
        [
            tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            str(EXAMPLES / "github-actions.yml"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_workflow_check_catches_a_wrong_key(tmp_path):
    broken = tmp_path / "workflow.yml"
    broken.write_text((EXAMPLES / "github-actions.yml").read_text().replace("runs-on:", "run-on:"))
    done = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(broken)],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0


def workflow_commands() -> list[list[str]]:
    """Every hpsearch command line the workflow's steps run, `${{ ... }}` filled in."""
    workflow = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    commands = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            script = re.sub(r"\$\{\{[^}]*\}\}", "X", step.get("run", ""))
            for line in re.split(r"\n|&&", script):  # a folded `>` block is one line
                words = shlex.split(line.split(">")[0])
                if words and words[0] == "hpsearch":
                    commands.append(words)
    return commands


def test_the_workflow_runs_valid_hpsearch_commands():
    commands = workflow_commands()
    assert {words[1] for words in commands} == {"run", "report"}, commands
    for words in commands:
        params = parse_command(words)
        if words[1] == "run":
            check_spec(params)


# --- Slurm ------------------------------------------------------------------------------------


def test_the_slurm_script_parses_and_runs_a_valid_command():
    script = EXAMPLES / "slurm-array.sh"
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = script.read_text()
    assert re.search(r"^#SBATCH --cpus-per-task=\d+$", text, re.MULTILINE)
    command = re.search(r"^hpsearch run .*?(?<!\\)$", text, re.MULTILINE | re.DOTALL).group(0)
    filled = {
        "$spec": "configs/quickstart.yaml",
        '"$storage"': "postgresql+psycopg://u@db:5432/s",
        '"$study"': "s",
        '"$SLURM_CPUS_PER_TASK"': "4",
        '"runs/$SLURM_ARRAY_TASK_ID"': "runs/0",
    }
    for variable, value in filled.items():
        command = command.replace(variable, value)
    params = parse_command(shlex.split(command.replace("\\\n", " ")))
    check_spec(params)
    assert params["workers"] == 4


@pytest.mark.parametrize("flag", ["--storage", "--study", "--runs-dir"])
def test_a_parsed_command_rejects_what_the_cli_would(flag):
    # the parser above is the real one: an option it lacks fails
    with pytest.raises(Exception, match="No such option"):
        parse_command(["hpsearch", "run", "configs/quickstart.yaml", flag + "x", "v"])
