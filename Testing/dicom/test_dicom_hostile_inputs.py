"""``explain --dicom`` on what a hospital or a hostile input gives: a model card's wrong codes, a
source series without the attributes or the geometry the objects copy, an input series in the
folder the objects go to (each one line before the network runs, nothing written); labels beyond
the source's character set; ``--store`` with an obstacle in ``--out`` (nothing sent) and a password
in the server's URL (never written or shown). A small threshold model (TorchScript,
``--trust-model``) on a small real MR series keeps each run under a second."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from toy_models import blob, threshold_model_file

from SegGradCAMLib.api import explain
from SegGradCAMLib.demo.dicom_series import write_mr_series
from SegGradCAMLib.dicom_options import DicomOptions
from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.options import ExplainOptions


def mr_series(folder: Path) -> Path:
    """A real MR series (8 slices of 16 x 16) of a bright blob, the threshold model's class."""
    image = sitk.GetImageFromArray(blob((8, 16, 16), (4, 8, 8), 3) * 100)
    image.SetSpacing((1.5, 1.5, 2.0))
    image.SetOrigin((-30.0, -40.0, 10.0))
    write_mr_series(image, folder)
    return folder


def run(series: Path, model: Path, out: Path, stages: list[str] | None = None):
    """explain --dicom of ``series``; ``stages`` collects the progress stages reached."""
    options = ExplainOptions(
        inputs=[str(series)], model=str(model), trust_model=True, out=out, dicom=DicomOptions(write_dicom=True)
    )
    reached = [] if stages is None else stages
    return explain(options, progress=lambda stage, done, total: reached.append(stage))


@pytest.mark.parametrize(
    "terminology, problem",
    [
        ({"blob": ["SCT:999", "SCT:12738006"]}, "'SCT:999' is not in the DICOM standard"),
        ({"blob": ["SCT:12738006", "SCT:12738006"]}, "not a segmentation category"),
        ({"tumour": ["SCT:91723000", "SCT:12738006"]}, "'tumour' is not one of its labels"),
        (["SCT:91723000"], '"terminology" must be an object'),
    ],
)
def test_a_cards_wrong_terminology_is_refused_before_the_network_runs(tmp_path, terminology, problem):
    model = threshold_model_file(tmp_path / "model")
    (tmp_path / "model" / "seggradcam_card.json").write_text(json.dumps({"terminology": terminology}))
    stages: list[str] = []
    with pytest.raises(SegGradCAMError, match=problem) as error:
        run(mr_series(tmp_path / "series"), model, tmp_path / "out", stages)
    assert "\n" not in str(error.value)
    assert "windows" not in stages and "backward" not in stages  # no network pass
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "attribute, problem",
    [
        ("FrameOfReferenceUID", r"no Frame of Reference UID \(0020,0052\)"),
        ("StudyInstanceUID", r"no Study Instance UID \(0020,000D\)"),
    ],
)
def test_a_source_series_without_a_required_uid_is_one_line_before_the_network(tmp_path, attribute, problem):
    series = mr_series(tmp_path / "series")
    for path in series.iterdir():
        dataset = pydicom.dcmread(path)
        delattr(dataset, attribute)
        dataset.save_as(path)
    stages: list[str] = []
    with pytest.raises(SegGradCAMError, match=problem) as error:
        run(series, threshold_model_file(tmp_path / "model"), tmp_path / "out", stages)
    assert "\n" not in str(error.value) and "backward" not in stages
    assert not (tmp_path / "out").exists()


def test_a_source_series_without_patient_and_study_details_gets_them_empty(tmp_path):
    """Anonymised series often lack the patient's and study's type 2 attributes: the objects keep
    them empty (no value is invented) and are written."""
    series = mr_series(tmp_path / "series")
    missing = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID")
    for path in series.iterdir():
        dataset = pydicom.dcmread(path)
        for keyword in (*missing, "AccessionNumber", "ReferringPhysicianName"):
            if keyword in dataset:
                delattr(dataset, keyword)
        dataset.save_as(path)
    report = run(series, threshold_model_file(tmp_path / "model"), tmp_path / "out")
    seg = pydicom.dcmread(tmp_path / "out" / report.dicom["files"][0])
    assert all(keyword in seg and not seg[keyword].value for keyword in missing)
    for name in report.dicom["files"]:
        check = subprocess.run(["dciodvfy", str(tmp_path / "out" / name)], capture_output=True, text=True, timeout=60)
        assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")], name


@pytest.mark.parametrize("slice_index", [0, 3, 7])
def test_a_slice_without_its_position_is_named(tmp_path, slice_index):
    series = mr_series(tmp_path / "series")
    path = sorted(series.iterdir())[slice_index]
    dataset = pydicom.dcmread(path)
    del dataset.ImagePositionPatient
    dataset.save_as(path)
    with pytest.raises(SegGradCAMError, match=rf"DICOM file {path.name} has no Image Position \(Patient\)"):
        run(series, threshold_model_file(tmp_path / "model"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_input_series_in_the_folder_the_objects_go_to_is_refused_and_kept(tmp_path):
    """``--out case`` with the input series in ``case/dicom``: the objects would join the input
    series (the next run would read two series there)."""
    series = mr_series(tmp_path / "case" / "dicom")
    before = sorted(p.name for p in series.iterdir())
    with pytest.raises(SegGradCAMError, match="is an input series' folder") as error:
        run(series, threshold_model_file(tmp_path / "model"), tmp_path / "case")
    assert "\n" not in str(error.value)
    assert sorted(p.name for p in series.iterdir()) == before
    assert sorted(p.name for p in (tmp_path / "case").iterdir()) == ["dicom"]


def test_a_long_label_keeps_the_layer_in_each_parametric_maps_description(tmp_path):
    label = "L" * 80
    model = threshold_model_file(tmp_path / "model", labels=["background", label])
    options = ExplainOptions(
        inputs=[str(mr_series(tmp_path / "series"))],
        model=str(model),
        trust_model=True,
        out=tmp_path / "out",
        layers="features,head",
        dicom=DicomOptions(write_dicom=True),
    )
    report = explain(options)
    descriptions = [pydicom.dcmread(tmp_path / "out" / name).SeriesDescription for name in report.dicom["files"][1:]]
    assert len(descriptions) == 2 and all(len(text) <= 64 for text in descriptions)
    assert [text.split()[-1] for text in descriptions] == ["features", "head"]
    assert all(text.startswith("SegGradCAM hirescam LLL") for text in descriptions)
    assert np.unique(descriptions).size == 2


def test_a_series_read_without_dicom_output_refuses_a_slice_without_its_position(tmp_path):
    """Without a slice's position, ITK spaces the volume by a wrong mean gap (7.9 mm for 2 mm here)."""
    from SegGradCAMLib.volumes.files import read_volume

    series = mr_series(tmp_path / "series")
    path = sorted(series.iterdir())[3]
    dataset = pydicom.dcmread(path)
    del dataset.ImagePositionPatient
    dataset.save_as(path)
    with pytest.raises(SegGradCAMError, match=rf"DICOM file {path.name} has no Image Position \(Patient\)"):
        read_volume(str(series))


@pytest.mark.parametrize("character_set", [None, "ISO_IR 100"])
def test_labels_beyond_the_sources_character_set_are_written_as_they_are(tmp_path, character_set):
    """A source series in the default repertoire (ASCII) or Latin-1, a label in German and Japanese,
    a patient named in Latin-1: every object keeps each character (UTF-8) and is valid."""
    series = mr_series(tmp_path / "series")
    for path in series.iterdir():
        dataset = pydicom.dcmread(path)
        del dataset.SpecificCharacterSet
        if character_set:
            dataset.SpecificCharacterSet = character_set
            dataset.PatientName = "Müller^Jörg"
        dataset.save_as(path)
    label = "Ödem 脳腫瘍"
    model = threshold_model_file(tmp_path / "model", labels=["background", label])
    report = run(series, model, tmp_path / "out")
    seg, pm = (pydicom.dcmread(tmp_path / "out" / name) for name in report.dicom["files"])
    assert seg.SegmentSequence[0].SegmentLabel == label and label in pm.SeriesDescription
    assert str(seg.PatientName) == str(pydicom.dcmread(next(series.iterdir())).PatientName)
    for name in report.dicom["files"]:
        check = subprocess.run(["dciodvfy", str(tmp_path / "out" / name)], capture_output=True, text=True, timeout=60)
        assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")], name


def edit_instances(series: Path, change, only: int | None = None) -> None:
    """``change(dataset, k)`` on instance ``k`` of ``series`` (file order), or on instance ``only``."""
    for k, path in enumerate(sorted(series.iterdir())):
        if only is None or k == only:
            dataset = pydicom.dcmread(path)
            change(dataset, k)
            dataset.save_as(path)


@pytest.mark.parametrize(
    "change, only, problem",
    [
        (lambda d, k: delattr(d, "ImageOrientationPatient"), None, r"no Image Orientation \(Patient\) \(0020,0037\)"),
        (lambda d, k: delattr(d, "ImageOrientationPatient"), 2, r"no Image Orientation \(Patient\) \(0020,0037\)"),
        (lambda d, k: delattr(d, "PixelSpacing"), None, r"no Pixel Spacing \(0028,0030\)"),
        (lambda d, k: delattr(d, "ImagePositionPatient"), None, r"no Image Position \(Patient\) \(0020,0032\)"),
        (lambda d, k: setattr(d, "PixelSpacing", [1.0, 1.0]), 2, "is not on the series' grid"),
    ],
)
def test_a_source_series_without_its_plane_geometry_is_one_line(tmp_path, change, only, problem):
    series = mr_series(tmp_path / "series")
    edit_instances(series, change, only)
    with pytest.raises(SegGradCAMError, match=problem) as error:
        run(series, threshold_model_file(tmp_path / "model"), tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_orientations_that_differ_in_the_last_digits_are_one_orientation(tmp_path):
    """Slices whose Image Orientation (Patient) differs by rounding (1e-5): the objects take the
    first slice's, as the volume does."""
    series = mr_series(tmp_path / "series")
    edit_instances(series, lambda d, k: setattr(d, "ImageOrientationPatient", [1, 1e-5 * k, 0, 0, 1, 0]))
    report = run(series, threshold_model_file(tmp_path / "model"), tmp_path / "out")
    for name in report.dicom["files"]:
        shared = pydicom.dcmread(tmp_path / "out" / name).SharedFunctionalGroupsSequence[0]
        orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
        assert np.allclose(orientation, [1, 0, 0, 0, 1, 0], atol=1e-4)


@pytest.mark.parametrize("obstacle", ["dicom", "dicom/segmentation.dcm"])
def test_store_sends_nothing_when_the_outputs_cannot_be_put_in_place(orthanc, tmp_path, obstacle):
    """A file where ``OUT/dicom`` goes, or a folder where the SEG goes: the run is refused in one
    line before anything reaches the server (each rerun would store new objects again)."""
    series = mr_series(tmp_path / "series")
    orthanc.upload(sorted(series.iterdir()))
    study = str(pydicom.dcmread(next(series.iterdir())).StudyInstanceUID)
    out = tmp_path / "out"
    (out / "dicom").mkdir(parents=True) if "/" in obstacle else out.mkdir()
    (out / obstacle).mkdir() if "/" in obstacle else (out / obstacle).write_text("the user's file")
    before = orthanc.instance_count()
    dicom = DicomOptions(dicomweb=orthanc.dicomweb, study=study, store=True)
    options = ExplainOptions(
        model=str(threshold_model_file(tmp_path / "model")), trust_model=True, out=out, dicom=dicom
    )
    with pytest.raises(SegGradCAMError, match=f"{out / obstacle} is a") as error:
        explain(options)
    assert "\n" not in str(error.value)
    assert orthanc.instance_count() == before


def test_a_password_in_the_server_url_is_never_written_nor_shown(orthanc, tmp_path):
    """``http://user:password@host/dicom-web`` (HTTP basic authentication): explain.json and every
    message name the server without the password."""
    series = mr_series(tmp_path / "series")
    orthanc.upload(sorted(series.iterdir()))
    study = str(pydicom.dcmread(next(series.iterdir())).StudyInstanceUID)
    url = orthanc.dicomweb.replace("http://", "http://reader:secret-pw@")
    model = str(threshold_model_file(tmp_path / "model"))
    dicom = DicomOptions(dicomweb=url, study=study, store=True)
    explain(ExplainOptions(model=model, trust_model=True, out=tmp_path / "out", dicom=dicom))
    written = (tmp_path / "out" / "explain.json").read_text()
    assert "secret-pw" not in written and orthanc.dicomweb in written
    unknown = DicomOptions(dicomweb=url, study=pydicom.uid.generate_uid())
    with pytest.raises(SegGradCAMError, match="No study") as error:
        explain(ExplainOptions(model=model, trust_model=True, out=tmp_path / "other", dicom=unknown))
    assert "secret-pw" not in str(error.value) and orthanc.dicomweb in str(error.value)
    with pytest.raises(SegGradCAMError) as error:
        DicomOptions(dicomweb=url.replace("http", "htp"), study=study)
    assert "secret-pw" not in str(error.value)
