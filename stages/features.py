"""features@<variant>: a frozen backbone's features for every cached image, computed once per backbone,
weights, image size and cache (cxr.features); kept across runs while that key holds."""
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cxr import compute  # noqa: E402
from cxr.errors import run_stage  # noqa: E402
from cxr.data.cache import cache_sha256  # noqa: E402
from cxr.features import FEATURES_FILE, KEY_FILE, compute_features, feature_key, read_key, wanted  # noqa: E402
from cxr.outputs import atomic_path, write_json  # noqa: E402
from cxr.params import load_variant  # noqa: E402
from cxr.paths import CACHE, features_dir  # noqa: E402


def main() -> None:
    variant, params = load_variant(description=__doc__)
    mp, out = params.model(variant), Path(features_dir(variant))
    why_not = wanted(mp, params.train.feature_cache)
    if why_not is not None:
        # The stage still writes its output (DVC needs one), saying why there are no features.
        with atomic_path(out) as tmp:
            tmp.mkdir()
            write_json(tmp / KEY_FILE, {"used": False, "why": why_not})
        print(f"features@{variant}: none: {why_not}")
        return
    key = feature_key(mp, params.image.size, cache_sha256(CACHE), params.compute, params.train.seed)
    stored = read_key(out)
    if stored is not None and stored.get("key") == key and (out / FEATURES_FILE).is_file():
        print(f"features@{variant}: kept ({stored['images']} images x {stored['dims']} features of "
              f"{mp.family}, same backbone, weights, size and cache)")
        return
    compute.configure(params.compute)
    from cxr.data.cache import load_cache
    from cxr.train import build_network, set_determinism

    set_determinism(params.train.seed)
    pixels, _ = load_cache(CACHE)
    model = build_network(mp, params.image.size, len(params.labels.targets), variant)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        done = compute_features(model, pixels, tmp / FEATURES_FILE)
        (tmp / KEY_FILE).write_text(json.dumps({"used": True, "key": key, "images": done["images"],
                                                "dims": done["dims"]}, indent=2, sort_keys=True) + "\n")
    print(f"features@{variant}: {done['images']} images x {done['dims']} features of {mp.family} in "
          f"{done['seconds']} s ({done['ms_per_image']} ms/image)")


if __name__ == "__main__":
    run_stage(main, "features")
