"""Base images are pinned to a release: a floating tag (`latest`, `1-bookworm`,
`bookworm-slim`, `6.2`) makes a rebuild something nobody tested.

    python pinned-images.py Dockerfile docker-compose.yml
"""
import re
import sys

import yaml

images = re.findall(r"(?m)^FROM\s+(\S+)", open(sys.argv[1]).read())
services = yaml.safe_load(open(sys.argv[2]))["services"]
# An image the file builds itself is named, not pulled.
images += [s["image"] for s in services.values() if "image" in s and "build" not in s]
for image in images:
    name = image.split("@")[0].split("/")[-1]
    tag = name.split(":", 1)[1] if ":" in name else ""
    pinned = "@sha256:" in image or re.match(r"^\d+\.\d+\.\d+", tag) or re.match(r"^\d+\.\d+-", tag)
    assert pinned, f"{image} floats: pin a release"
print("pinned:", ", ".join(images))
