"""The glyphs dataset (s2sd_deploy.training.glyphs): rules kept and removed, its cost, and a raw-pixel baseline.

Usage:  OMP_NUM_THREADS=1 .venv/bin/python bench/glyphs_dataset.py [--size 32] [--out bench/results/glyphs]
Renders the set cold into a temporary cache (the user's cache is not touched), loads it back from that cache,
measures leave-one-out Recall@1 of raw pixels on the test split (nearest neighbour by cosine of the flattened,
mean-centred, L2-normalised images) and writes OUT/dataset.json and OUT/dataset.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from s2sd_deploy.atomic_files import write_text_atomic
from s2sd_deploy.bench.machine import cpu_model
from s2sd_deploy.metrics import nearest_neighbours
from s2sd_deploy.tables import markdown_table as table
from s2sd_deploy.training import glyphs


def recall_at_1(images: np.ndarray, labels: np.ndarray, centre_on_dataset_mean: bool = False) -> np.ndarray:
    """Per image: does its nearest other image (cosine) share its label?"""
    vectors = images.reshape(len(images), -1).astype(np.float32)
    vectors -= vectors.mean(axis=0) if centre_on_dataset_mean else vectors.mean(axis=1, keepdims=True)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return labels[nearest_neighbours(vectors, 1)[:, 0]] == labels


def retrieval_baseline(split: glyphs.Glyphs) -> dict:
    hits = recall_at_1(split.images, split.labels)
    script_of_image = np.array(split.scripts)[split.labels]
    return {
        "recall_at_1": round(float(hits.mean()), 4),
        "recall_at_1_dataset_mean_centred": round(float(recall_at_1(split.images, split.labels, True).mean()), 4),
        "per_script": {s: round(float(hits[script_of_image == s].mean()), 4) for s in sorted(set(split.scripts))},
    }


def timed_loads(size: int) -> tuple[glyphs.Glyphs, float, list[float]]:
    """(set, cold render seconds, cache-load seconds of three loads) in a temporary cache folder."""
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        rendered = glyphs.load_glyphs(size, cache_dir=cache)
        cold = time.perf_counter() - started
        loads = []
        for _ in range(3):
            started = time.perf_counter()
            glyphs.load_glyphs(size, cache_dir=cache)
            loads.append(time.perf_counter() - started)
        cache_bytes = glyphs.cache_path(size, cache).stat().st_size
    rendered.report["cache_file_bytes"] = cache_bytes
    return rendered, cold, loads


def markdown(result: dict) -> str:
    report, timing = result["report"], result["timing"]
    thresholds = report["thresholds"]
    scripts = list(report["stages"]["candidates"])
    splits = report["splits"]
    parts = [
        "# Glyphs dataset: characters rendered from matplotlib's bundled fonts",
        f"Command: `{result['command']}`",
        f"Machine: {result['machine']}; matplotlib {report['versions']['matplotlib']}, Pillow "
        f"{report['versions']['pillow']}, FreeType {report['versions']['freetype']}, Unicode "
        f"{report['versions']['unicode']}, RENDER_VERSION {report['versions']['render_version']}",
        "## Splits",
        table(
            ["split", "classes", "images", "images per class (min / median / max)", "classes per script"],
            [
                [
                    name,
                    s["classes"],
                    s["images"],
                    "{min} / {median:g} / {max}".format(**s["images_per_class"]),
                    ", ".join(f"{k} {v}" for k, v in s["classes_per_script"].items()),
                ]
                for name, s in splits.items()
            ],
        ),
        f"{report['size']} px images; {len(report['fonts_used'])} fonts used.",
        "## Cost",
        f"Cold render (fingerprint, render, select, write the cache): **{timing['cold_render_s']:.2f} s**; "
        f"load from the cache: **{timing['cache_load_s'] * 1000:.0f} ms** (median of 3, fingerprint included); "
        f"cache file {report['cache_file_bytes'] / 1e6:.1f} MB.",
        "## Raw-pixel Recall@1 (leave-one-out)",
        "Nearest neighbour by cosine of the flattened, mean-centred (per image), L2-normalised pixel vectors.",
        table(
            ["split", "Recall@1", "dataset-mean centred", "per script"],
            [
                [
                    name,
                    f"**{b['recall_at_1']:.4f}**" if name == "test" else f"{b['recall_at_1']:.4f}",
                    f"{b['recall_at_1_dataset_mean_centred']:.4f}",
                    ", ".join(f"{k} {v:.3f}" for k, v in b["per_script"].items()),
                ]
                for name, b in result["raw_pixel_baseline"].items()
            ],
        ),
        "## Fonts",
        "Used: " + ", ".join(report["fonts_used"]) + ".",
        table(["dropped font", "why"], [[k, v] for k, v in sorted(report["fonts_dropped"].items())]),
        "Share of the candidates each font's cmap maps that fail rules 1-3 (measured against the medians of all "
        f"fonts; above {thresholds['font_failure_fraction']} drops the font):",
        table(
            ["font", "failing"],
            [[k, f"{v:.1%}"] for k, v in sorted(report["font_failure_fraction"].items(), key=lambda kv: -kv[1])],
        ),
        "## Characters per script after each rule",
        table(["stage", *scripts], [[stage, *counts.values()] for stage, counts in report["stages"].items()]),
        "Test letters left out before rendering as precomposed (a base letter plus a mark): "
        + ", ".join(f"{k} {v}" for k, v in report["test_letters_left_out_as_precomposed"].items())
        + ".",
        "## Rule 1: glyphs named as another character (never rendered)",
        table(
            ["font", "code point -> glyph name"],
            [[k, ", ".join(v)] for k, v in report["glyph_named_as_another_character"].items()],
        ),
        "## Rule 2: blank or clipped renderings",
        f"Blank (less than {thresholds['min_ink']} pixels of ink): {', '.join(report['blank']) or 'none'}.",
        f"Clipped (glyph box leaves the image): {len(report['clipped'])}: {', '.join(report['clipped']) or 'none'}.",
        f"Ink of the kept renderings: min {report['ink_of_kept_renderings']['min']}, median "
        f"{report['ink_of_kept_renderings']['median']} pixels.",
        "## Rule 3: agreement with the other fonts",
        f"Correlation with the per-pixel median of the character over the kept fonts, both blurred by "
        f"{thresholds['agreement_blur']} px; below {thresholds['agreement_threshold']} is dropped. Dropped: "
        + (", ".join(f"{name} ({value})" for name, value in report["disagreeing_renderings"]) or "none")
        + f". Lowest kept: {', '.join(str(v) for v in report['lowest_kept_agreement'])}.",
        histogram("Agreement of the renderings in kept fonts", report["agreement_histogram"]),
        "## Rule 4: one shape, one class",
        f"One shape: median correlation over the shared fonts >= {thresholds['duplicate_threshold']}, or, for a "
        f"pair with a test character, median largest difference of the {thresholds['lookalike_blur']} px-blurred "
        f"renderings <= {thresholds['lookalike_max_difference']} (two test characters: merged) or <= "
        f"{thresholds['leak_max_difference']} (a test and a training character: the test one is dropped).",
        table(
            ["merged", "correlation", "difference"],
            [["/".join(m["characters"]), shown(m["correlation"]), shown(m["difference"])] for m in report["merges"]],
        ),
        table(
            ["dropped from test", "script", "looks like (train)", "correlation", "difference"],
            [
                [d["test"], d["script"], d["train"], shown(d["correlation"]), shown(d["difference"])]
                for d in report["lookalikes_dropped_from_test"]
            ],
        ),
        "Closest pairs kept apart, by correlation: "
        + ", ".join(f"{p} {v}" for p, v in report["closest_pairs_kept_apart"]["by_correlation"])
        + ".\n\nClosest pairs with a test character kept apart, by difference: "
        + ", ".join(f"{p} {v}" for p, v in report["closest_pairs_kept_apart"]["by_difference_with_a_test_character"])
        + ".",
        histogram("Pair correlation (top of the distribution)", report["pair_correlation_histogram"]),
        histogram(
            "Pair difference, pairs with a test character",
            report["pair_difference_histogram_with_a_test_character"],
        ),
        "## Rule 5: classes with fewer than " + str(thresholds["min_fonts"]) + " fonts",
        table(
            ["script", "classes (fonts)"],
            [[k, " ".join(f"{c}({n})" for c, n in v.items())] for k, v in report["too_few_fonts"].items()],
        ),
    ]
    return "\n\n".join(parts) + "\n"


def shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def histogram(title: str, data: dict) -> str:
    edges, counts = data["edges"], data["counts"]
    rows = [[f"{lo:.3f}-{hi:.3f}", count] for lo, hi, count in zip(edges, edges[1:], counts)]
    return f"{title}:\n\n" + table(["bin", "pairs or renderings"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=glyphs.DEFAULT_SIZE)
    parser.add_argument("--out", default="bench/results/glyphs")
    args = parser.parse_args()
    rendered, cold, loads = timed_loads(args.size)
    train, test = glyphs.split_by_script(rendered)
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}",
        "timing": {"cold_render_s": round(cold, 3), "cache_load_s": round(statistics.median(loads), 4)},
        "raw_pixel_baseline": {"test": retrieval_baseline(test), "train": retrieval_baseline(train)},
        "report": glyphs.dataset_report(rendered),
    }
    out = Path(args.out)
    write_text_atomic(out / "dataset.json", json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    text = markdown(result)
    write_text_atomic(out / "dataset.md", text)
    print(text)


if __name__ == "__main__":
    main()
