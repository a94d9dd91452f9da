"""download: fetch data.source into data/raw/ (images/, their manifest images.md5, Data_Entry_2017.csv)."""
from cxr.data.download import fetch
from cxr.errors import run_stage
from cxr.paths import BUNDLED, RAW
from cxr.params import load_params


def main() -> None:
    params = load_params()
    r = fetch(params.data.source, RAW, BUNDLED)
    print(f"download: {r['images']} images from {r['source']} ({r['fetched']} fetched, "
          f"{r['already_present']} already present, {r['removed_stale']} stale removed)")


if __name__ == "__main__":
    run_stage(main, "download")
