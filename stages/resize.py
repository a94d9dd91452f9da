"""resize: data/raw/images (as listed in data/raw/images.md5) -> data/cache (uint8, image.size), bad images reported."""
import sys

from cxr.data.cache import build_cache
from cxr.data.download import manifest_names
from cxr.errors import run_stage
from cxr.outputs import write_json
from cxr.params import load_params
from cxr.paths import CACHE, RAW, RAW_IMAGES, stage_metrics

METRICS = stage_metrics("resize")


def main() -> None:
    params = load_params()
    paths = [f"{RAW_IMAGES}/{n}" for n in manifest_names(RAW)]
    report = build_cache(paths, params.image.size, params.resize.workers, CACHE,
                         params.resize.max_bad_fraction, progress=sys.stderr.isatty())
    write_json(METRICS, report)
    print(f"resize: {report['cached']} of {report['images']} images cached at {report['size']} px, "
          f"{report['excluded']} excluded")


if __name__ == "__main__":
    run_stage(main, "resize")
