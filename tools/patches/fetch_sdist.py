"""Download one sdist from the package index, checked against a pinned sha256.

    python fetch_sdist.py NAME VERSION SHA256 DEST_DIR [INDEX_URL]

Prints the path of the file. tools/setup.sh uses it where `pip download` cannot be
used: pip prepares an sdist's metadata (runs its setup.py) before it saves the
file, and mmcv 2.1.0's setup.py dies on Python 3.13 -- which is what the patch
in this folder fixes. Standard library only. The index is INDEX_URL (setup.sh
passes pip's configured index-url), else $PIP_INDEX_URL, else PyPI; HTTP(S)
proxies come from the environment as for pip. A file already in DEST_DIR with the
right hash is not downloaded again.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.parse
import urllib.request


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    name, version, want, dest = argv[:4]
    index = (argv[4] if len(argv) == 5 and argv[4] else
             os.environ.get('PIP_INDEX_URL') or 'https://pypi.org/simple')
    filename = f"{name.replace('-', '_')}-{version}.tar.gz"  # sdists name onedl-mmcv onedl_mmcv-...
    path = os.path.join(dest, filename)
    if os.path.exists(path) and sha256(path) == want:
        print(path)
        return 0
    page_url = index.rstrip('/') + f'/{name}/'
    print(f'reading {page_url}', file=sys.stderr)
    with urllib.request.urlopen(page_url, timeout=60) as r:
        page = r.read().decode('utf-8', 'replace')
    links = [urllib.parse.urljoin(page_url, href) for href in
             re.findall(r'href="([^"]+)"', page) if f'/{filename}' in href.split('#')[0]
             or href.split('#')[0] == filename]
    if not links:
        raise SystemExit(f'{filename} is not on the index {index}')
    url = links[0].split('#')[0]
    os.makedirs(dest, exist_ok=True)
    print(f'downloading {url}', file=sys.stderr)
    tmp = path + '.part'
    with urllib.request.urlopen(url, timeout=300) as r, open(tmp, 'wb') as f:
        while block := r.read(1 << 20):
            f.write(block)
    got = sha256(tmp)
    if got != want:
        os.remove(tmp)
        raise SystemExit(f'{filename} from {url} has sha256 {got}, expected {want} (pinned in '
                         'tools/patches/); the index serves another file')
    os.replace(tmp, path)
    print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
