"""What an evaluation run writes for people: `summary.md`, the metrics table (mmgdino, and transformers beside it
when compared) and the AP of every category."""


def _format(value):
    return "-" if value is None else f"{100 * value:.1f}"


def summary_markdown(report, per_category):
    keys = list(report["metrics"])
    lines = [
        f"# mmgdino eval: {report['protocol']} ({report['ap_kind']})",
        "",
        f"{report['images']} images{' (a SUBSET: --limit ' + str(report['limit']) + ')' if report['subset'] else ''}"
        f", {report['detections']} detections, {report['prompts']} prompt(s), model `{report['settings']['model']}`,"
        f" {report['settings']['device']} {report['settings']['dtype']}, batch size {report['settings']['batch_size']}"
        f"{' (images padded to shared sizes: not the reference protocol)' if report['batched'] else ''}.",
        "",
        "| | " + " | ".join(keys) + " | s/image |",
        "|---|" + "---:|" * (len(keys) + 1),
        "| mmgdino | "
        + " | ".join(_format(report["metrics"][k]) for k in keys)
        + f" | {report['seconds_per_image'] if report['seconds_per_image'] is not None else '-'} |",
    ]
    if "transformers" in report:
        t = report["transformers"]
        lines.append(
            "| transformers | "
            + " | ".join(_format(t["metrics"].get(k)) for k in keys)
            + f" | {t['seconds_per_image']} |"
        )
        lines += ["", t["how"]]
    if report["failed_images"]:
        lines += ["", f"{len(report['failed_images'])} images could not be read (no detections counted for them)."]
    lines += ["", "## Per category (AP)", "", "| id | category | AP |", "|---:|---|---:|"]
    lines += [f"| {c['id']} | {c['name']} | {_format(c['AP'])} |" for c in per_category]
    return "\n".join(lines) + "\n"
