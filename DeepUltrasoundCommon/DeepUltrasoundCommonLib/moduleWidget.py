"""Widget base shared by the DeepUltrasound modules (Slicer application only: imports Qt-backed classes).

It does what every module's panel does the same way: load ``Resources/UI/<Module>.ui``, bind
the module's parameter node to the widgets that carry ``SlicerParameterName``, keep Apply
enabled only when the inputs are set, list the engine's model bundles (installing the
engine first), and run Apply inside ``tryWithErrorDisplay``. A module's widget names its
parameter node fields and implements :meth:`DeepUltrasoundWidget.createLogic`,
:meth:`~DeepUltrasoundWidget.missingInputs` and :meth:`~DeepUltrasoundWidget.apply`.

Every module's ``.ui`` must therefore contain ``applyButton``, ``modelComboBox``,
``refreshModelsButton`` and ``statusLabel``, and its parameter node a ``modelName: str`` field
(bound here to the model list, whose first item "Default" stands for ``""``: the engine's default).

On a Slicer older than the extension supports, the panel shows only the reason (see
:mod:`.versions`); :attr:`DeepUltrasoundWidget.logic` then stays None.
"""

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from .bundles import listBundledModels, modelChoices
from .dependencies import ensureRequirements
from .versions import unsupportedPythonMessage


class DeepUltrasoundWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel of a DeepUltrasound module.

    Attributes:
        bundleTask: task name of the model bundles this module offers (e.g. ``"elastography"``).
    """

    bundleTask = ""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # observes the parameter node and the scene
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    # Module-specific parts.

    def createLogic(self):
        """The module's logic; it must provide ``getParameterNode()``."""
        raise NotImplementedError

    def missingInputs(self, parameterNode) -> str:
        """Why Apply cannot run yet (shown as its tooltip), or ``""`` when it can."""
        raise NotImplementedError

    def apply(self, parameterNode) -> str:
        """Run the module on the parameter node's inputs; returns a one-line status.

        Call :meth:`ensureEngine` before the first engine call.
        """
        raise NotImplementedError

    # Shared behaviour.

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        unsupported = unsupportedPythonMessage()
        if unsupported:
            message = qt.QLabel(unsupported)
            message.wordWrap = True
            self.layout.addWidget(message)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{self.moduleName}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.createLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.onRefreshModels)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.fillModelList([])
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        if self.logic is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        if self.logic is not None:
            self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered and self.logic is not None:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameterNode) -> None:
        """Bind ``parameterNode`` to the widgets (``None`` unbinds)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
            self.updateGui()

    def updateGui(self, caller=None, event=None) -> None:
        """What ``connectGui`` does not bind: Apply's state and the model list."""
        self.updateApplyButton()
        self.showModelName()

    def updateApplyButton(self) -> None:
        reason = self.missingInputs(self._parameterNode) if self._parameterNode else _("No parameter node")
        self.ui.applyButton.enabled = not reason
        self.ui.applyButton.toolTip = reason or _("Run the module on the selected inputs")

    def onModelChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.modelName = self.ui.modelComboBox.itemData(index) or ""

    def showModelName(self) -> None:
        """Select the parameter node's model in the model list (added when it is not listed yet)."""
        if not self._parameterNode:
            return
        chosen = self._parameterNode.modelName
        index = self.ui.modelComboBox.findData(chosen)
        wasBlocked = self.ui.modelComboBox.blockSignals(True)
        if index < 0:
            self.ui.modelComboBox.addItem(chosen, chosen)
            index = self.ui.modelComboBox.count - 1
        self.ui.modelComboBox.setCurrentIndex(index)
        self.ui.modelComboBox.blockSignals(wasBlocked)

    def fillModelList(self, bundles) -> None:
        """ "Default" and ``bundles`` in the model list; the parameter node's choice stays selected."""
        wasBlocked = self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for label, name in modelChoices(bundles):
            self.ui.modelComboBox.addItem(label, name)
        self.ui.modelComboBox.blockSignals(wasBlocked)
        self.showModelName()

    def ensureEngine(self) -> None:
        """Install the engine's third-party packages if missing, after the user agrees."""
        ensureRequirements(requester=self.moduleName)

    def onRefreshModels(self) -> None:
        """List the engine's model bundles for this module's task, keeping the current choice when it is still there."""
        with slicer.util.tryWithErrorDisplay(_("Failed to list the model bundles."), waitCursor=True):
            self.ensureEngine()
            bundles = listBundledModels(self.bundleTask)
            self.fillModelList(bundles)
            self.ui.statusLabel.text = _("{count} model bundle(s) installed").format(count=len(bundles))

    def onApplyButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to compute results."), waitCursor=True):
            self.ui.statusLabel.text = self.apply(self._parameterNode)


class BackgroundJobWidget(DeepUltrasoundWidget):
    """Panel of a module whose Apply runs one engine command in the background (see :mod:`.engineJob`).

    Apply starts the logic's job (``processParameterNode(parameterNode, waitForCompletion=False)``)
    and turns into Cancel; a timer shows the job's progress and, once it has ended, the logic's
    ``finish()`` summary, then :meth:`showJobResult`. The logic provides ``job`` (the running
    ``EngineJob`` or None), ``processParameterNode``, ``finish()`` and ``cancel()``.

    Attributes:
        jobTitle: what the job computes, as the status line names it (e.g. "Tracking").
        pollIntervalMs: how often the background process is polled.
    """

    jobTitle = ""
    pollIntervalMs = 200

    def showJobResult(self, job) -> None:
        """Show the results of ``job``, which has just been read into the output nodes."""
        raise NotImplementedError

    def setup(self) -> None:
        super().setup()
        if self.logic is None:  # an unsupported Slicer: the panel shows why
            return
        self.timer = qt.QTimer()  # runs while a job runs; see onTimer
        self.timer.setInterval(self.pollIntervalMs)
        self.timer.connect("timeout()", self.onTimer)

    def cleanup(self) -> None:
        """Application exit or module reload: no process may outlive the panel."""
        if self.logic is not None:
            self.timer.stop()
            self.logic.cancel()
        super().cleanup()

    def apply(self, parameterNode) -> str:
        """Start the job in the background: Apply turns into Cancel, :meth:`onTimer` shows the results."""
        self.ensureEngine()
        self.logic.processParameterNode(parameterNode, waitForCompletion=False)
        self.ui.applyButton.text = _("Cancel")
        self.timer.start()
        return _("{title} running...").format(title=self.jobTitle)

    def onApplyButton(self) -> None:
        if self.logic.job is None:
            super().onApplyButton()
            return
        self.timer.stop()
        self.logic.cancel()
        self.ui.applyButton.text = _("Apply")
        self.ui.statusLabel.text = _("{title} cancelled").format(title=self.jobTitle)

    def onTimer(self) -> None:
        """Progress of the running job; once it has ended, its results."""
        job = self.logic.job
        if job is None:
            self.timer.stop()
            return
        if job.poll():
            if job.progress is not None:
                self.ui.statusLabel.text = _("{title}: frame {done} of {total}").format(
                    title=self.jobTitle, done=job.progress[0], total=job.progress[1]
                )
            return
        self.timer.stop()
        self.ui.applyButton.text = _("Apply")
        with slicer.util.tryWithErrorDisplay(_("Failed to compute results."), waitCursor=True):
            self.ui.statusLabel.text = self.logic.finish()
            self.showJobResult(job)
