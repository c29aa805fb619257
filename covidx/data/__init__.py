"""Sample chest X-rays bundled with covidx (permissive licences; see samples/ATTRIBUTION.csv)."""
import csv
import os

SAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")


def sample_files():
    """[(path, label)] for the bundled sample X-rays, sorted by path."""
    with open(os.path.join(SAMPLES_DIR, "ATTRIBUTION.csv"), newline="") as f:
        rows = [(os.path.join(SAMPLES_DIR, r["path"]), r["label"]) for r in csv.DictReader(f)]
    return sorted(rows)
