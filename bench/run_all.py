"""Run every benchmark in bench/ and rebuild docs/benchmarks.md."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMANDS = [
    ["train_throughput.py", "--model", "simple_cnn", "--data", "fashion-mnist"],
    ["train_throughput.py", "--model", "simple_cnn", "--data", "digits", "--steps", "100", "--repeats", "5"],
    ["latency.py"],
    ["train_run.py", "--model", "mobilenetv2", "--data", "imagefolder:../shared/data/cifar10-jpeg", "--epochs", "1"],
    ["runtimes.py"],
]

if __name__ == "__main__":
    for cmd in COMMANDS:
        print("$ python bench/" + " ".join(cmd), flush=True)
        subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]], check=True)
