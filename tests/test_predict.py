"""predict: image discovery, output names, in-process prediction with untrained parameters."""

import jax
import numpy as np
import pytest
from PIL import Image

from zsad_jax import config_lib, methods
from zsad_jax.predict import UsageError, expand_images, output_names, predict


def test_expand_images_files_folders_globs(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.JPG", "notes.txt", "sub/c.bmp"):
        (tmp_path / name).write_bytes(b"x")
    assert expand_images([str(tmp_path)]) == [str(tmp_path / "a.JPG"), str(tmp_path / "b.png")]
    assert expand_images([str(tmp_path / "**" / "*.bmp")]) == [str(tmp_path / "sub" / "c.bmp")]
    # A file given by name is taken whatever its extension (PIL decides if it can read it).
    assert expand_images([str(tmp_path / "notes.txt"), str(tmp_path / "b.png"),
                          str(tmp_path / "b.png")]) == [str(tmp_path / "notes.txt"),
                                                         str(tmp_path / "b.png")]
    with pytest.raises(UsageError, match="nothing-here"):
        expand_images([str(tmp_path / "nothing-here*.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no image file"):
        expand_images([str(tmp_path / "empty")])
    # A '**' glob through a symlink loop: each image once (by its real path).
    (tmp_path / "sub" / "loop").symlink_to(tmp_path / "sub")
    assert expand_images([str(tmp_path / "**" / "*.bmp")]) == [str(tmp_path / "sub" / "c.bmp")]


def test_output_names_are_unique_and_safe():
    assert output_names(["/x/a.png", "/y/a.jpg", "/z/my photo.png", "/z/bild_ñçđ.png",
                         "/z/a:b?.png"]) == ["a", "a_2", "my photo", "bild_ñçđ", "a_b_"]


def test_predict_in_process_with_batches_and_padding(tmp_path):
    config = config_lib.load_config("linear_probe.py", {"model.image_size": 32})
    method = methods.build(config)
    params = method.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(33, 20), (64, 64), (17, 90)]):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    (tmp_path / "empty.png").write_bytes(b"")
    paths.insert(1, str(tmp_path / "empty.png"))
    out = tmp_path / "out"
    predictor = predict(method, params, config, paths, out, batch_size=2, progress=False)
    assert [p for p, _ in predictor.failed] == [str(tmp_path / "empty.png")]
    assert [r["image"] for r in predictor.rows] == [paths[0], paths[2], paths[3]]
    assert all(r["mask"] == "" for r in predictor.rows)       # no threshold, no mask
    assert (out / "scores.csv").read_text().count("\n") == 4
    assert np.asarray(Image.open(out / "img2_heatmap.png")).shape == (17, 90, 3)
    with pytest.raises(UsageError, match="vmax"):
        predict(method, params, config, paths, out, vmin=1.0, vmax=0.5, progress=False)
