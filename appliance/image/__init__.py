"""Golden images: building (``builder``), naming, manifests and integrity (``manifest``)."""

from appliance.image.manifest import (
    GoldenImage,
    latest_image,
    list_images,
    load_image,
    verify_image,
)

__all__ = ["GoldenImage", "latest_image", "list_images", "load_image", "verify_image"]
