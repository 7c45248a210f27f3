"""``slopekp viewer``: the server's pages and files, and the page in headless Chromium: it loads and shows the mesh
(issue 11)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from slopekp.cli import main
from slopekp.viewer import listing, serve_in_thread

#: The page's background behind a mesh (viewer.js BACKGROUND), in 0..255.
BACKGROUND = np.array([0.149, 0.188, 0.227]) * 255


@pytest.fixture(scope="module")
def predictions(tiny_model, tmp_path_factory):
    """``slopekp predict`` on two SynthBirds test photos (with their masks), a copy with a broken GLB, and a folder
    of 24 predictions (more than a browser keeps WebGL contexts) with names that URLs must escape."""
    from slopekp.data.cub import CubDataset

    root = tmp_path_factory.mktemp("viewer")
    ds = CubDataset(tiny_model.data, split="test", img_size=64)
    images, masks = [], []
    for i in range(2):
        images.append(str(ds.image_path(i)))
        Image.fromarray(ds.records[i].mask.astype(np.uint8) * 255).save(root / f"mask{i}.png")
        masks.append(str(root / f"mask{i}.png"))
    out = root / "pred"
    assert main(["predict", *images, "--mask", *masks, "--checkpoint", str(tiny_model.checkpoint), "--out", str(out),
                 "--quiet", "--turntable-frames", "0", "--size", "64"]) == 0  # fmt: skip
    broken = root / "broken"
    shutil.copytree(out, broken)
    for d in broken.iterdir():
        if (d / "mesh.glb").is_file():
            (d / "mesh.glb").write_bytes(b"glTF but not really")
    many = root / "many"
    many.mkdir()
    first = sorted(p for p in out.iterdir() if p.is_dir())[0]
    for i in range(24):
        shutil.copytree(first, many / f"bird #{i} 100%")
    return out, broken, many


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, b"", ""


def test_listing_and_server(predictions, tmp_path):
    out = predictions[0]
    lst = listing(out)
    names = [it["name"] for it in lst["items"]]
    assert len(names) == 2 and lst["failed"] == 0 and "keypoints head, trained on SynthBirds" in lst["model"]
    assert all(it["glb"] == f"files/{it['name']}/mesh.glb" and "input" in it and "camera" in it for it in lst["items"])
    server, url = serve_in_thread(out)
    try:
        code, body, ctype = _get(url)
        assert code == 200 and b"viewer.js" in body and ctype.startswith("text/html")
        code, body, ctype = _get(url + "viewer.js")
        assert code == 200 and b"parseGLB" in body and "javascript" in ctype
        code, body, _ = _get(url + "predictions.json")
        assert json.loads(body) == lst
        code, body, ctype = _get(url + lst["items"][0]["glb"])
        assert code == 200 and body[:4] == b"glTF" and ctype == "model/gltf-binary"
        assert body == (out / names[0] / "mesh.glb").read_bytes()
        # nothing outside the folder, nothing that is not there
        (out.parent / "secret.txt").write_text("private")
        for bad in ("files/../secret.txt", "files/%2e%2e/secret.txt", "files/nope/mesh.glb", "etc/passwd",
                    "files/x%00/mesh.glb"):  # fmt: skip
            assert _get(url + bad)[0] == 404, bad
        # a page elsewhere whose name points at 127.0.0.1 (DNS rebinding) is refused
        req = urllib.request.Request(url + "predictions.json", headers={"Host": "evil.example:8000"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 403
        req = urllib.request.Request(url + "predictions.json", headers={"Host": f"localhost:{server.server_port}"})
        assert urllib.request.urlopen(req, timeout=10).status == 200
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ValueError, match="no predictions to show"):
        listing(tmp_path)
    (tmp_path / "predictions.json").write_text("{broken")
    with pytest.raises(ValueError, match="predictions.json: not an index"):
        listing(tmp_path)


def test_viewer_command_refuses_a_folder_without_predictions(tmp_path, capsys):
    assert main(["viewer", str(tmp_path), "--port", "0"]) == 2
    assert "no predictions to show" in capsys.readouterr().err


@pytest.mark.parametrize("name", [5, None, "", "..", "a/b", ["x"]])
def test_viewer_refuses_an_index_whose_name_is_not_a_folder_name(tmp_path, capsys, name):
    """A hand-edited predictions.json with a non-string or path-like name is a one-line error naming the index and the
    entry, not a traceback (issue 20)."""
    (tmp_path / "predictions.json").write_text(json.dumps({"images": [{"name": name, "status": "ok"}]}))
    with pytest.raises(ValueError, match=r"predictions\.json: images\[0\] has the name"):
        listing(tmp_path)
    assert main(["viewer", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "predictions.json: images[0] has the name" in err and "Traceback" not in err


def _chromium() -> str:
    for name in (os.environ.get("SLOPEKP_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium found (.ci/run installs Debian's chromium; or set SLOPEKP_CHROMIUM)")


def _browser(url: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
             "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000"]  # fmt: skip
    return subprocess.run([_chromium(), *flags, *args, url], capture_output=True, text=True, timeout=120)


def _mesh_pixels(shot) -> float:
    """The share of pixels that differ from the page's background."""
    a = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    return float((np.abs(a - BACKGROUND).max(axis=2) > 12).mean())


@pytest.mark.parametrize("which", ["good", "broken", "many"])
def test_the_page_shows_the_meshes_in_headless_chromium(predictions, tmp_path, which):
    out = predictions[("good", "broken", "many").index(which)]
    server, url = serve_in_thread(out)
    try:
        dom = _browser(url, tmp_path, "--window-size=1200,900", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        name = listing(out)["items"][0]["name"]
        shot = tmp_path / "shot.png"
        r = _browser(f"{url}?name={urllib.parse.quote(name)}&solo=1", tmp_path, "--window-size=400,400",
                     f"--screenshot={shot}")  # fmt: skip
        assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    finally:
        server.shutdown()
        server.server_close()
    share = _mesh_pixels(shot)
    if which == "good":
        assert 'data-status="ready"' in dom.stdout and 'data-ready="2"' in dom.stdout, dom.stdout[:3000]
        assert dom.stdout.count('class="card" data-status="ready"') == 2
        assert "textured" in dom.stdout
        assert 0.02 < share < 0.9, share  # the mesh fills part of the view, not none and not all of it
    elif which == "broken":  # the test can fail: a GLB that does not parse shows an error and an empty view
        assert 'data-status="error"' in dom.stdout and "not a GLB file" in dom.stdout
        assert share < 0.001, share
    else:  # every card loads (names with '#', '%' and spaces included); only those on screen hold a WebGL view
        assert dom.stdout.count('class="card" data-status="ready"') == 24 and 'data-ready="24"' in dom.stdout
        live = dom.stdout.count('data-view="on"')
        assert 1 <= live <= 8, live
        assert 0.02 < share < 0.9, share
