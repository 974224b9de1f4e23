"""Shared fixtures: small MONAI networks (random weights, eval mode) and data paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SLICER_UI_FILE = Path(__file__).resolve().parents[1] / "SegGradCAM" / "Resources" / "UI" / "SegGradCAM.ui"
COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")
COLIN27_BRAIN = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
KMEANS_T1 = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz")
KMEANS_BRAIN = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1RawSkullStrip.nii.gz")


def small_monai_network(name: str, dims: int, out_channels: int = 3) -> torch.nn.Module:
    """A small MONAI segmentation network with fixed random weights, in eval mode."""
    from monai.networks import nets

    torch.manual_seed(0)
    builders = {
        "UNet": lambda: nets.UNet(dims, 1, out_channels, (8, 16, 32, 64), (2, 2, 2), num_res_units=1),
        "BasicUNet": lambda: nets.BasicUNet(dims, 1, out_channels, features=(8, 8, 16, 32, 64, 8)),
        "DynUNet": lambda: nets.DynUNet(dims, 1, out_channels, [3, 3, 3, 3], [1, 2, 2, 2], [2, 2, 2]),
        "SegResNet": lambda: nets.SegResNet(dims, init_filters=8, in_channels=1, out_channels=out_channels),
        "AttentionUnet": lambda: nets.AttentionUnet(dims, 1, out_channels, (8, 16, 32, 64), (2, 2, 2)),
    }
    return builders[name]().eval()


MONAI_ARCHITECTURES = ["UNet", "BasicUNet", "DynUNet", "SegResNet", "AttentionUnet"]


@pytest.fixture(scope="session")
def colin27() -> Path:
    assert COLIN27.is_file(), "Debian package mricron-data is needed (apt-get install mricron-data)"
    return COLIN27


@pytest.fixture()
def one_torch_thread():
    """Run torch on one thread (many small forwards: threads only contend on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_slicer_ui():
    """The module's .ui file loaded by Qt's own QUiLoader (offscreen), and the QApplication;
    ctk/qMRML widgets become their declared base class."""
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    file = QFile(str(SLICER_UI_FILE))
    assert file.open(QFile.ReadOnly)
    widget = QUiLoader().load(file)
    file.close()
    assert widget is not None, "QUiLoader could not load SegGradCAM.ui"
    return widget, app


@pytest.fixture(scope="session")
def small_case(tmp_path_factory) -> list[str]:
    """A held-out demo case cut to 10 axial slices: one slice batch for the 2D demo model."""
    import numpy as np
    import SimpleITK as sitk

    from SegGradCAMLib.demo import data as demo_data

    case, _ = next(demo_data.iter_cases(demo_data.EVAL_SEED))
    folder = tmp_path_factory.mktemp("case")
    paths = demo_data.write_case(case, folder)
    centre = int(np.argwhere(case.labels > 0)[:, 0].mean())
    cut = []
    for channel in demo_data.CHANNELS:
        image = sitk.ReadImage(str(paths[channel]))
        path = folder / f"{channel}_cut.nrrd"
        sitk.WriteImage(image[:, :, centre - 5 : centre + 5], str(path))
        cut.append(str(path))
    return cut


@pytest.fixture(scope="session")
def two_lesion_slices(tmp_path_factory) -> list[str]:
    """The two consecutive slices of the first held-out demo case with two lesions where its edema
    (label 1) is two components of at least 200 voxels each, one file per channel."""
    import itertools

    import numpy as np
    import SimpleITK as sitk
    from scipy import ndimage

    from SegGradCAMLib.demo import data as demo_data

    for case, _ in itertools.islice(demo_data.iter_cases(demo_data.EVAL_SEED), 12):
        if ndimage.label(case.labels > 0, np.ones((3, 3, 3), bool))[1] == 2:
            break
    else:
        pytest.fail("no held-out demo case with two lesions among the first 12")

    def second_largest(z: int) -> int:
        components, _ = ndimage.label(case.labels[z : z + 2] == 1, np.ones((3, 3, 3), bool))
        return sorted([0, 0, *np.bincount(components.ravel())[1:]])[-2]

    z = max(range(case.labels.shape[0] - 1), key=second_largest)
    assert second_largest(z) >= 200
    folder = tmp_path_factory.mktemp("two_lesions")
    paths = demo_data.write_case(case, folder)
    cut = []
    for channel in demo_data.CHANNELS:
        path = folder / f"{channel}_cut.nrrd"
        sitk.WriteImage(sitk.ReadImage(str(paths[channel]))[:, :, z : z + 2], str(path))
        cut.append(str(path))
    return cut


@pytest.fixture(scope="session")
def orthanc():
    """A running Orthanc with DICOMweb (Testing/orthanc.py), shared by the session (each test
    stores a study of its own)."""
    from orthanc import running_orthanc

    with running_orthanc() as server:
        yield server


@pytest.fixture(scope="session")
def refusing_orthanc():
    """A running Orthanc that refuses every STOW-RS request (403 Forbidden)."""
    from orthanc import running_orthanc

    with running_orthanc(refuse_stow=True) as server:
        yield server
