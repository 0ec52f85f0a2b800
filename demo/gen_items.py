#!/usr/bin/env python3
"""Generate demo/items.jsonl: ~200 weld-inspection items in both import formats.

Deterministic (fixed seed, UUIDv5 ids), so running it again gives the same file:

    python3 demo/gen_items.py > demo/items.jsonl

Mixes the two line formats hookops imports (design §1):
  * plain items: {"id", "name", "path", "tags", "properties", "annotations"}
    (a few without "id", so the importer derives one; a few annotations without "id" too);
  * whole Darwin JSON 2.0 exports: {"version", "schema_ref", "item": {...}, "annotations",
    "properties"}, shaped exactly like V7's exports (shared/fixtures/darwin-v2/), with item-level
    properties as V7 writes them: a list of {"name", "value"}.

About 10 % are urgent (a plain "urgent" tag, or a Darwin tag annotation named "urgent"), about
8 % have quality "blurry" (the demo's triage discards them), every item has a "camera".
"""

import json
import random
import sys
import uuid

SEED = 20240917
COUNT = 200
NS = uuid.UUID("6f1c1f7e-2b6a-4d4e-9a57-5f1e0a1d7c42")  # this script's namespace
SCHEMA_REF = "https://darwin-public.s3.eu-west-1.amazonaws.com/darwin_json/2.0/schema.json"
DARWIN = "https://darwin.v7labs.com"
TEAM = {"name": "Acme", "slug": "acme"}
DATASET = {"name": "Weld inspection", "slug": "weld-inspection"}
DATASET_NUMBER = 412907
CAMERAS = ["cam-north-1", "cam-north-2", "cam-south-1", "cam-robot-7"]
LINES = [1, 2, 3, 4]
DEFECTS = ["crack", "porosity", "spatter", "undercut", "burn_through"]
POLYGON_DEFECTS = {"crack", "undercut"}
EXTRA_TAGS = ["night-shift", "retake", "line-stop"]


def uid(*parts):
    return str(uuid.uuid5(NS, "/".join(str(p) for p in parts)))


def r4(v):
    return round(v, 4)


def bbox_annotation(rng, n, k, name, width, height):
    w = rng.uniform(20, 260)
    h = rng.uniform(15, 180)
    x = rng.uniform(0, width - w)
    y = rng.uniform(0, height - h)
    return {
        "bounding_box": {"h": r4(h), "w": r4(w), "x": r4(x), "y": r4(y)},
        "id": uid("annotation", n, k),
        "name": name,
        "properties": [],
        "slot_names": ["0"],
    }


def polygon_annotation(rng, n, k, name, width, height):
    cx = rng.uniform(150, width - 150)
    cy = rng.uniform(150, height - 150)
    points = []
    for i in range(rng.randint(4, 7)):
        # A thin, irregular shape around the centre, like a crack along a seam.
        dx = rng.uniform(-140, 140)
        dy = rng.uniform(-40, 40) + i * 6
        points.append({"x": r4(cx + dx), "y": r4(cy + dy)})
    xs = [p["x"] for p in points]
    ys = [p["y"] for p in points]
    return {
        "bounding_box": {
            "h": r4(max(ys) - min(ys)),
            "w": r4(max(xs) - min(xs)),
            "x": r4(min(xs)),
            "y": r4(min(ys)),
        },
        "id": uid("annotation", n, k),
        "name": name,
        "polygon": {"paths": [points]},
        "properties": [],
        "slot_names": ["0"],
    }


def tag_annotation(n, k, name):
    return {
        "id": uid("annotation", n, k),
        "name": name,
        "properties": [],
        "slot_names": ["0"],
        "tag": {},
    }


def defect_annotations(rng, n, width, height):
    anns = []
    for k in range(rng.choice([0, 1, 1, 2, 2, 3, 4])):
        defect = rng.choice(DEFECTS)
        if defect in POLYGON_DEFECTS:
            anns.append(polygon_annotation(rng, n, k, defect, width, height))
        else:
            anns.append(bbox_annotation(rng, n, k, defect, width, height))
    return anns


def image_slot(n, slot_name, file_name, width, height, folder):
    return {
        "type": "image",
        "slot_name": slot_name,
        "width": width,
        "height": height,
        "thumbnail_url": f"{DARWIN}/api/v2/teams/acme/files/{uid('file', n, slot_name)}/thumbnail",
        "source_files": [
            {
                "file_name": file_name,
                "storage_key": f"weld-inspection{folder}/{file_name}",
                "url": f"{DARWIN}/api/v2/teams/acme/uploads/{uid('upload', n, slot_name)}",
            }
        ],
    }


def item_name(rng, n):
    if n == 7:
        return "Schweißnaht_0007.jpg"  # non-ASCII names exist in real datasets
    if n == 42:
        return "weld_0042 (retake).jpg"
    prefix = rng.choice(["weld", "weld", "weld", "seam", "pipe_joint"])
    ext = rng.choice(["jpg", "jpg", "jpg", "png"])
    return f"{prefix}_{n:04d}.{ext}"


def main():
    rng = random.Random(SEED)
    out = []
    for n in range(1, COUNT + 1):
        name = item_name(rng, n)
        line = rng.choice(LINES)
        folder = f"/line-{line}/2024-09-{rng.randint(1, 28):02d}"
        camera = rng.choice(CAMERAS)
        urgent = rng.random() < 0.10
        blurry = rng.random() < 0.08
        width, height = rng.choice([(1920, 1080), (2448, 2048), (1280, 1024)])
        anns = defect_annotations(rng, n, width, height)
        darwin = n % 5 in (2, 4)  # 40 % Darwin exports, 60 % plain items

        if darwin:
            item_id = uid("item", n)
            if urgent:
                anns.append(tag_annotation(n, len(anns), "urgent"))
            if rng.random() < 0.15:
                anns.append(tag_annotation(n, len(anns), "needs_second_opinion"))
            properties = [{"name": "camera", "value": camera}]
            properties.append({"name": "quality", "value": "blurry" if blurry else "ok"})
            slots = [image_slot(n, "0", name, width, height, folder)]
            if n % 25 == 4:
                # A few two-sided captures: the back of the seam in a second slot.
                back = name.rsplit(".", 1)[0] + "_back.jpg"
                slots.append(image_slot(n, "1", back, width, height, folder))
            doc = {
                "version": "2.0",
                "schema_ref": SCHEMA_REF,
                "item": {
                    "name": name,
                    "path": folder,
                    "source_info": {
                        "item_id": item_id,
                        "dataset": {
                            **DATASET,
                            "dataset_management_url": f"{DARWIN}/datasets/{DATASET_NUMBER}/dataset-management",
                        },
                        "team": TEAM,
                        "workview_url": f"{DARWIN}/workview?dataset={DATASET_NUMBER}&item={item_id}",
                    },
                    "slots": slots,
                },
                "annotations": anns,
                "properties": properties,
            }
            out.append(doc)
        else:
            tags = []
            if urgent:
                tags.append("urgent")
            if rng.random() < 0.2:
                tags.append(rng.choice(EXTRA_TAGS))
            properties = {"camera": camera, "line": line}
            if blurry:
                properties["quality"] = "blurry"
            elif rng.random() < 0.5:
                properties["quality"] = "ok"
            if rng.random() < 0.3:
                properties["inspector_ids"] = sorted(rng.sample([101, 102, 103, 104, 105], 2))
            if n % 40 == 13:
                # Annotations exported without ids: the importer gives them UUIDv5 ids.
                for a in anns:
                    del a["id"]
            doc = {}
            if n % 50 != 16:  # a few lines without an id: the importer derives one
                doc["id"] = f"acme-weld-{n:04d}"
            doc.update(
                {
                    "name": name,
                    "path": folder,
                    "tags": tags,
                    "properties": properties,
                    "annotations": anns,
                }
            )
            out.append(doc)

    for doc in out:
        sys.stdout.write(json.dumps(doc, ensure_ascii=False, separators=(", ", ": ")) + "\n")


if __name__ == "__main__":
    main()
