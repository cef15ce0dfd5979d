"""Static checks of the Slicer extension: files, CMake lists, .ui files, and the Slicer API the modules use.

What needs the Slicer application (Qt widgets, ``slicer.app``) cannot run here, so it is
checked against the sources: every ``self.ui.<name>`` exists in the module's ``.ui``, every
``slicer.util`` function exists in the slicer-core wheel, other ``slicer`` symbols are in the
documented allow-list below, and the engine never imports Qt or Slicer.
"""

from __future__ import annotations

import ast
import py_compile
import re
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import slicer
import slicer.util

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["DeepUSE", "EchoRegistration", "USSynth", "USSuperRes"]
COMMON = "DeepUltrasoundCommon"
COMMON_LIB = ROOT / COMMON / f"{COMMON}Lib"
#: the widget base shared by the four modules; the names it uses must be in every module's .ui
SHARED_WIDGET = COMMON_LIB / "moduleWidget.py"

#: ``slicer`` symbols that exist only in the Slicer application (not in slicer-core), with why they may be used.
APP_ONLY_SLICER_API = {
    "app": "qSlicerApplication instance (Slicer application only)",
    "mrmlScene": "the application's MRML scene; Lib code takes nodes and their scene as arguments instead",
    "modules": "loaded modules by name (slicer.modules.<name>)",
    "packaging": "Python package helpers with pip_ensure (Slicer >= 5.9); dependencies.py falls back without it",
    "i18n": "translation function tr (slicer.i18n)",
    "parameterNodeWrapper": "typed parameter nodes: parameterNodeWrapper, WithinRange (Slicer >= 5.4)",
    "ScriptedLoadableModule": "base classes of scripted modules",
    "vtkMRMLIGTLConnectorNode": (
        "OpenIGTLinkIF connector node (SlicerOpenIGTLink extension, the DeepUSE scanner connection)"
    ),
}
#: top-level imports allowed in the MRML-facing Lib code (it must import with slicer-core alone).
LIB_IMPORTS = set(sys.stdlib_module_names) - {"tkinter"} | {"numpy", "packaging", "slicer", "vtk", COMMON + "Lib"}
#: widget classes that slicer.parameterNodeWrapper's GUI connectors bind to each field type (exact class match)
BINDABLE_WIDGETS = {
    "bool": {"QCheckBox", "QPushButton"},
    "int": {"QSpinBox", "QSlider"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "str": {"QLineEdit", "QTextEdit"},
    "Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
}
#: parameter node fields the shared widget or the module's widget wires to its widget by hand
HAND_WIRED_FIELDS = {"modelName", "modelPath"}
#: the engine package behind each module; a module is hidden while its package does not exist
#: module -> the engine command it runs (the CLI contract); a module is shown once the engine offers it
ENGINE_COMMANDS = {"DeepUSE": "strain", "EchoRegistration": "register", "USSynth": "synth", "USSuperRes": "superres"}
#: imports the engine must never make.
FRONTEND_IMPORTS = {"qt", "ctk", "slicer", "vtk", "PythonQt", "slicer_core", "MRMLCorePython"}


def modulePythonFiles(module: str) -> list[Path]:
    return sorted((ROOT / module).rglob("*.py"))


def libFiles(module: str) -> list[Path]:
    return sorted((ROOT / module / f"{module}Lib").glob("*.py"))


def allPythonFiles() -> list[Path]:
    return [path for module in [COMMON, *MODULES] for path in modulePythonFiles(module)]


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def uiObjectNames(uiPath: Path) -> list[str]:
    root = ET.parse(uiPath).getroot()
    return [element.get("name") for element in root.iter() if element.tag in ("widget", "layout", "spacer")]


def selfUiNames(tree: ast.AST) -> set[str]:
    """Names ``x`` in every ``self.ui.x`` of the source."""
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }


def slicerAttributes(tree: ast.AST) -> list[tuple[str, str]]:
    """``(namespace, name)`` for each ``slicer.name`` and ``slicer.util.name`` in the source."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer":
            found.append(("slicer", node.attr))
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "util"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "slicer"
        ):
            found.append(("slicer.util", node.attr))
    return found


def slicerImports(tree: ast.AST) -> list[tuple[str, str]]:
    """``(namespace, name)`` for ``from slicer import name`` and ``from slicer.x import name``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "slicer":
            found.extend((node.module, alias.name) for alias in node.names)
        if isinstance(node, ast.Import):
            found.extend(("import", alias.name) for alias in node.names if alias.name.startswith("slicer."))
    return found


def topLevelImportRoots(tree: ast.Module) -> set[str]:
    roots = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def parameterNodeFields(tree: ast.Module, module: str) -> dict[str, ast.expr]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == f"{module}ParameterNode":
            decorators = {d.id for d in node.decorator_list if isinstance(d, ast.Name)}
            assert "parameterNodeWrapper" in decorators, f"{module}ParameterNode must use @parameterNodeWrapper"
            return {s.target.id: s.annotation for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError(f"{module}.py has no {module}ParameterNode class")


def mrmlClasses(annotation: ast.expr) -> list[str]:
    """The MRML classes a parameter node field holds: ``[C]`` for ``vtkMRMLC``, every class of a
    ``Union[vtkMRMLA, vtkMRMLB, None]`` (a selector of several node types), else ``[]``."""
    text = ast.unparse(annotation)
    if text.startswith("vtkMRML"):
        return [text]
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Union":
        members = [ast.unparse(member) for member in annotation.slice.elts]
        classes = [member for member in members if member != "None"]
        if classes and all(member.startswith("vtkMRML") for member in classes):
            return classes
    return []


def pngSize(path: Path) -> tuple[int, int, int]:
    """``(width, height, colour type)`` from the PNG header (colour type 6 is RGBA)."""
    data = path.read_bytes()[:26]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    width, height = struct.unpack(">II", data[16:24])
    return width, height, data[25]


# Files and CMake ------------------------------------------------------------------------------


def test_top_level_cmake_is_a_slicer_extension():
    text = (ROOT / "CMakeLists.txt").read_text()
    for pattern in [
        r"cmake_minimum_required\(VERSION",
        r"project\(DeepUltrasound\)",
        r'set\(EXTENSION_HOMEPAGE "https://github.com/deepultrasound/SlicerDeepUltrasound"\)',
        r'set\(EXTENSION_CATEGORY "Ultrasound"\)',
        r"set\(EXTENSION_CONTRIBUTORS \"[^\"]+\"\)",
        r"set\(EXTENSION_DESCRIPTION \"[^\"]+\"\)",
        r'set\(EXTENSION_ICONURL "https://raw.githubusercontent.com/deepultrasound/SlicerDeepUltrasound/[^"]+\.png"\)',
        r'set\(EXTENSION_SCREENSHOTURLS "https://raw.githubusercontent.com/deepultrasound/SlicerDeepUltrasound/[^"]+"\)',
        r'set\(EXTENSION_DEPENDS "SlicerOpenIGTLink"\)',
        r"find_package\(Slicer REQUIRED\)",
        r"include\(\$\{Slicer_USE_FILE\}\)",
        r"include\(\$\{Slicer_EXTENSION_GENERATE_CONFIG\}\)",
        r"include\(\$\{Slicer_EXTENSION_CPACK\}\)",
    ]:
        assert re.search(pattern, text), f"CMakeLists.txt lacks {pattern}"
    assert re.findall(r"add_subdirectory\((\w+)\)", text) == [COMMON, *MODULES]
    iconPath = re.search(r"EXTENSION_ICONURL \"[^\"]+/main/([^\"]+)\"", text).group(1)
    assert pngSize(ROOT / iconPath) == (128, 128, 6)
    assert (ROOT / "Resources" / "Screenshots").is_dir()


@pytest.mark.parametrize("module", [COMMON, *MODULES])
def test_module_folder_has_the_template_files(module):
    folder = ROOT / module
    required = [
        f"{module}.py",
        f"{module}Lib/__init__.py",
        "CMakeLists.txt",
        "Testing/CMakeLists.txt",
        "Testing/Python/CMakeLists.txt",
    ]
    required += [f"Resources/Icons/{module}.png"]
    if module == COMMON:
        required += ["Resources/requirements.txt"]  # the engine's third-party packages, one file for every module
    else:
        required += [f"{module}Lib/logic.py", f"Resources/UI/{module}.ui"]
    for relative in required:
        assert (folder / relative).is_file(), f"{module}/{relative} is missing"
    assert pngSize(folder / "Resources" / "Icons" / f"{module}.png") == (128, 128, 6)
    assert (folder / "Testing" / "CMakeLists.txt").read_text().strip() == "add_subdirectory(Python)"


@pytest.mark.parametrize("module", [COMMON, *MODULES])
def test_module_cmake_lists_every_script_and_resource(module):
    folder = ROOT / module
    text = (folder / "CMakeLists.txt").read_text()
    assert f"set(MODULE_NAME {module})" in text
    for pattern in [
        r"slicerMacroBuildScriptedModule\(",
        r"NAME \$\{MODULE_NAME\}",
        r"SCRIPTS \$\{MODULE_PYTHON_SCRIPTS\}",
        r"RESOURCES \$\{MODULE_PYTHON_RESOURCES\}",
        r"WITH_GENERIC_TESTS",
        r"if\(BUILD_TESTING\)\s+#[^\n]*\n\s*#[^\n]*\n\s*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)",
    ]:
        assert re.search(pattern, text), f"{module}/CMakeLists.txt lacks {pattern}"
    listed = {
        entry.replace("${MODULE_NAME}", module)
        for entry in re.findall(r"^\s+(\$\{MODULE_NAME\}\S+|Resources/\S+)$", text, re.M)
    }
    scripts = {str(p.relative_to(folder)) for p in [folder / f"{module}.py", *libFiles(module)]}
    resources = {str(p.relative_to(folder)) for p in (folder / "Resources").rglob("*") if p.is_file()}
    assert listed == scripts | resources
    for entry in listed:
        assert (folder / entry).is_file(), f"{module}/CMakeLists.txt lists {entry}, which does not exist"


@pytest.mark.parametrize("path", allPythonFiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "compiled.pyc"), doraise=True)


# Module layout --------------------------------------------------------------------------------


def logicMethods(module: str, logic: ast.ClassDef) -> set[str]:
    """Methods of a module's Logic class, with those of its bases defined in the module's Lib."""
    methods = {n.name for n in logic.body if isinstance(n, ast.FunctionDef)}
    bases = {b.id for b in logic.bases if isinstance(b, ast.Name)}
    for path in sorted((ROOT / module / f"{module}Lib").glob("*.py")):
        for node in parse(path).body:
            if isinstance(node, ast.ClassDef) and node.name in bases:
                methods |= {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    return methods


@pytest.mark.parametrize("module", MODULES)
def test_module_follows_the_scripted_module_layout(module):
    tree = parse(ROOT / module / f"{module}.py")
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    expected = {
        module: "ScriptedLoadableModule",
        f"{module}Widget": ("DeepUltrasoundWidget", "BackgroundJobWidget"),
        f"{module}Logic": "ScriptedLoadableModuleLogic",
        f"{module}Test": "ScriptedLoadableModuleTest",
    }
    for name, base in expected.items():
        assert name in classes, f"{module}.py has no class {name}"
        bases = {b.id for b in classes[name].bases if isinstance(b, ast.Name)}
        allowed = base if isinstance(base, tuple) else (base,)
        assert bases & set(allowed), f"{name} must derive from one of {allowed}"
    source = (ROOT / module / f"{module}.py").read_text()
    for banner in [module, f"{module}ParameterNode", f"{module}Widget", f"{module}Logic", f"{module}Test"]:
        assert f"#\n# {banner}\n#\n" in source, f"{module}.py lacks the banner of section {banner}"
    assert 'self.parent.categories = ["Ultrasound"]' in source
    for attribute in ["title", "contributors", "helpText", "acknowledgementText"]:
        assert f"self.parent.{attribute} = " in source
    assert {"getParameterNode", "process"} <= logicMethods(module, classes[f"{module}Logic"])
    widgetBase = parse(SHARED_WIDGET)
    mixins = [c for c in widgetBase.body if isinstance(c, ast.ClassDef) and c.name == "DeepUltrasoundWidget"][0]
    assert "VTKObservationMixin" in {b.id for b in mixins.bases if isinstance(b, ast.Name)}


@pytest.mark.parametrize("module", MODULES)
def test_module_test_runs_its_test_methods_without_early_return(module):
    tree = parse(ROOT / module / f"{module}.py")
    testClass = [c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == f"{module}Test"][0]
    methods = {n.name: n for n in testClass.body if isinstance(n, ast.FunctionDef)}
    testMethods = {name for name in methods if name.startswith("test_")}
    called = {
        n.func.attr
        for n in ast.walk(methods["runTest"])
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    }
    assert testMethods and testMethods <= called, f"runTest of {module}Test must call {testMethods}"
    for name in testMethods:
        assert not any(isinstance(n, ast.Return) for n in ast.walk(methods[name])), f"{module}Test.{name} returns early"
        assert any(
            isinstance(n, ast.Call) and getattr(n.func, "attr", "").startswith("assert")
            for n in ast.walk(methods[name])
        )


@pytest.mark.parametrize("module", MODULES)
def test_parameter_node_fields_are_typed_and_bounded(module):
    fields = parameterNodeFields(parse(ROOT / module / f"{module}.py"), module)
    assert "modelName" in fields, "the shared widget stores the chosen bundle in modelName"
    for name, annotation in fields.items():
        text = ast.unparse(annotation)
        if text in ("int", "float"):
            pytest.fail(f"{module}ParameterNode.{name} is an unbounded {text}: use Annotated[{text}, WithinRange(...)]")
        if text.startswith("Annotated["):
            assert "WithinRange(" in text or "Choice(" in text, (
                f"{module}ParameterNode.{name} needs WithinRange or Choice"
            )
        for className in mrmlClasses(annotation):
            assert hasattr(slicer, className), f"{module}ParameterNode.{name}: {className} is not an MRML class"


# .ui files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_ui_is_well_formed_qt_designer_xml(module):
    uiPath = ROOT / module / "Resources" / "UI" / f"{module}.ui"
    root = ET.parse(uiPath).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == module
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and top.get("name") == module
    for widget in root.iter("widget"):
        assert widget.get("class") and widget.get("name"), f"{uiPath.name}: a widget lacks class or name"
    names = uiObjectNames(uiPath)
    duplicates = {name for name in names if names.count(name) > 1}
    assert not duplicates, f"{uiPath.name}: duplicate objectNames {duplicates}"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared, "custom widget classes must be declared"
    for connection in root.iter("connection"):
        assert connection.findtext("sender") in names and connection.findtext("receiver") in names


@pytest.mark.parametrize("module", MODULES)
def test_every_self_ui_name_exists_in_the_ui(module):
    names = set(uiObjectNames(ROOT / module / "Resources" / "UI" / f"{module}.ui"))
    used = selfUiNames(parse(ROOT / module / f"{module}.py")) | selfUiNames(parse(SHARED_WIDGET))
    assert used, "the widget code uses no self.ui names: the check would be empty"
    assert used <= names, f"{module}: self.ui names missing from {module}.ui: {sorted(used - names)}"


@pytest.mark.parametrize("module", MODULES)
def test_bound_widgets_name_parameter_node_fields(module):
    fields = parameterNodeFields(parse(ROOT / module / f"{module}.py"), module)
    root = ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui").getroot()
    bound = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = widget.get("class")
    # modelName: the model list (items with data); modelPath: a str for a path line edit, wired by hand.
    assert set(bound) == set(fields) - HAND_WIRED_FIELDS, "every other field is bound to exactly one widget"
    for field, widgetClass in bound.items():
        annotation = fields[field]
        if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
            annotation = annotation.slice.elts[0]
        typeName = ast.unparse(annotation)
        expected = {"qMRMLNodeComboBox"} if mrmlClasses(annotation) else BINDABLE_WIDGETS.get(typeName, set())
        if "Choice(" in ast.unparse(fields[field]):  # a value from a list: a combo box of the choices
            expected = {"QComboBox"}
        assert widgetClass in expected, f"{field} ({typeName}) is bound to a {widgetClass}, not one of {expected}"


def uiProperties(module: str, widgetName: str) -> dict[str, str]:
    """The designer properties of one widget of the module's ``.ui`` (bool and string values as text)."""
    root = ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui").getroot()
    widget = next(w for w in root.iter("widget") if w.get("name") == widgetName)
    return {p.get("name"): "".join(p.itertext()).strip() for p in widget.findall("property")}


@pytest.mark.parametrize("module", MODULES)
def test_node_selectors_of_abstract_node_classes_list_their_subclasses(module):
    """A field typed with an abstract class (vtkMRMLColorNode) only ever holds subclasses: its selector
    must show child node types, or it stays empty."""
    fields = parameterNodeFields(parse(ROOT / module / f"{module}.py"), module)
    root = ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui").getroot()
    scene = slicer.vtkMRMLScene()
    for widget in root.iter("widget"):
        properties = uiProperties(module, widget.get("name")) if widget.get("class") == "qMRMLNodeComboBox" else {}
        field = properties.get("SlicerParameterName")
        if field is None:
            continue
        for className in mrmlClasses(fields[field]):
            if scene.CreateNodeByClass(className) is None:  # abstract: no node is exactly of this class
                shown = properties.get("showChildNodeTypes") != "false"
                assert shown, f"{widget.get('name')} ({className}) lists nothing"


def test_rf_selector_waits_for_the_incoming_rf_volume():
    """No automatic choice of the first scalar volume: the incoming 'RF' volume is picked when it arrives."""
    assert uiProperties("DeepUSE", "rfVolumeSelector")["noneEnabled"] == "true"


@pytest.mark.parametrize("module", MODULES)
def test_no_parameter_field_shows_a_dot_for_an_unset_path(module):
    fields = parameterNodeFields(parse(ROOT / module / f"{module}.py"), module)
    paths = [name for name, annotation in fields.items() if ast.unparse(annotation).endswith("Path")]
    assert not paths, f"{paths}: Path() reads '.'; use a str field (empty: unset)"


@pytest.mark.parametrize("module", MODULES)
def test_modules_without_an_engine_are_hidden(module):
    from deepultrasound.capabilities import capabilities

    engineExists = ENGINE_COMMANDS[module] in capabilities().commands
    hidden = [
        node
        for node in ast.walk(parse(ROOT / module / f"{module}.py"))
        if isinstance(node, ast.Assign)
        and ast.unparse(node.targets[0]) == "self.parent.hidden"
        and ast.unparse(node.value) == "True"
    ]
    assert bool(hidden) != engineExists, f"{module}: engine package exists: {engineExists}, hidden: {bool(hidden)}"


# Slicer API -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", allPythonFiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_slicer_symbols_exist_or_are_documented_app_only(path):
    tree = parse(path)
    for namespace, name in slicerAttributes(tree):
        if namespace == "slicer.util":
            assert hasattr(slicer.util, name), f"{path.name}: slicer.util.{name} does not exist"
        elif name != "util":
            assert hasattr(slicer, name) or name in APP_ONLY_SLICER_API, f"{path.name}: slicer.{name} is unknown"
    for namespace, name in slicerImports(tree):
        if namespace == "slicer":
            assert hasattr(slicer, name) or name in APP_ONLY_SLICER_API, f"{path.name}: from slicer import {name}"
        elif namespace == "slicer.util":
            assert hasattr(slicer.util, name), f"{path.name}: slicer.util.{name} does not exist"
        else:
            submodule = (name if namespace == "import" else namespace).split(".")[1]
            assert submodule in APP_ONLY_SLICER_API, f"{path.name}: slicer.{submodule} is not in the allow-list"


@pytest.mark.parametrize(
    "path", [p for m in [COMMON, *MODULES] for p in libFiles(m) if p != SHARED_WIDGET], ids=lambda p: p.name
)
def test_lib_code_imports_only_mrml_and_numpy_at_load_time(path):
    roots = topLevelImportRoots(parse(path))
    assert roots <= LIB_IMPORTS, f"{path.relative_to(ROOT)} imports {roots - LIB_IMPORTS} at module level"
    forbidden = {(ns, n) for ns, n in slicerImports(parse(path)) if ns not in ("slicer",) or n in APP_ONLY_SLICER_API}
    lazy = {("slicer", "packaging")}  # imported inside ensureRequirements, inside the application only
    assert forbidden <= lazy, f"{path.name} imports app-only Slicer API: {forbidden - lazy}"


@pytest.mark.parametrize("path", allPythonFiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_heavy_packages_are_imported_lazily(path):
    roots = topLevelImportRoots(parse(path))
    assert not roots & {"torch", "monai", "onnxruntime", "deepultrasound"}, (
        f"{path.name} imports the engine at load time"
    )


def test_engine_never_imports_qt_or_slicer():
    engineFiles = sorted((ROOT / "deepultrasound").rglob("*.py"))
    assert engineFiles
    for path in engineFiles:
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & FRONTEND_IMPORTS, f"{path.relative_to(ROOT)} imports {roots & FRONTEND_IMPORTS}"


# Timers -------------------------------------------------------------------------------------------


def _mentionsParameterNode(node: ast.AST, aliases: set[str]) -> bool:
    """Whether ``node`` reads the parameter node: ``self._parameterNode`` or a local alias of it."""
    return any(
        (isinstance(n, ast.Attribute) and n.attr == "_parameterNode") or (isinstance(n, ast.Name) and n.id in aliases)
        for n in ast.walk(node)
    )


def _guarded(method: ast.FunctionDef, target: ast.AST, aliases: set[str]) -> bool:
    """Whether ``target`` (a node in ``method``) runs only where the parameter node was tested: inside an if, a
    conditional expression or an ``and`` that tests it, or after an early return that does."""
    for statement in method.body:
        if (
            isinstance(statement, ast.If)
            and _mentionsParameterNode(statement.test, aliases)
            and any(isinstance(s, ast.Return) for s in statement.body)
            and statement.lineno < target.lineno
        ):
            return True
    for node in ast.walk(method):
        tests = []
        if isinstance(node, (ast.If, ast.IfExp)):
            tests = [(node.test, node.body if isinstance(node.body, list) else [node.body])]
        elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
            tests = [(value, node.values[index + 1 :]) for index, value in enumerate(node.values)]
        for test, guardedPart in tests:
            if _mentionsParameterNode(test, aliases) and any(target in ast.walk(part) for part in guardedPart):
                return True
    return False


def _parameterNodeAliases(method: ast.FunctionDef) -> set[str]:
    return {
        target.id
        for node in ast.walk(method)
        if isinstance(node, ast.Assign) and ast.unparse(node.value) == "self._parameterNode"
        for target in node.targets
        if isinstance(target, ast.Name)
    }


@pytest.mark.parametrize("module", MODULES)
def test_timer_callbacks_never_use_a_missing_parameter_node(module):
    """A module's timers run on while the module is not shown, when its parameter node is None: every method
    they reach uses the parameter node only after testing it, or is called only where its caller tested it."""
    classes = [parse(SHARED_WIDGET), parse(ROOT / module / f"{module}.py")]
    methods = {
        f.name: f
        for tree in classes
        for c in tree.body
        if isinstance(c, ast.ClassDef) and c.name.endswith("Widget")
        for f in c.body
        if isinstance(f, ast.FunctionDef)
    }
    roots = {
        ast.unparse(call.args[1]).removeprefix("self.")
        for method in methods.values()
        for call in ast.walk(method)
        if isinstance(call, ast.Call) and len(call.args) == 2 and ast.unparse(call.args[0]) == "'timeout()'"
    }
    callSites: dict[str, list[tuple[ast.FunctionDef, ast.Call]]] = {}
    reachable, pending = set(), list(roots)
    while pending:
        name = pending.pop()
        if name in reachable or name not in methods:
            continue
        reachable.add(name)
        for call in ast.walk(methods[name]):
            if (
                isinstance(call, ast.Call)
                and ast.unparse(call.func).startswith("self.")
                and "." not in ast.unparse(call.func).removeprefix("self.")
            ):
                callee = ast.unparse(call.func).removeprefix("self.")
                callSites.setdefault(callee, []).append((methods[name], call))
                pending.append(callee)
    # Methods every call of which runs where the parameter node was tested (by the caller, or its callers).
    protected: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name in reachable - roots - protected:
            sites = callSites.get(name, [])
            if sites and all(
                caller.name in protected or _guarded(caller, call, _parameterNodeAliases(caller))
                for caller, call in sites
            ):
                protected.add(name)
                changed = True
    for name in sorted(reachable - protected):
        method = methods[name]
        aliases = _parameterNodeAliases(method)
        unguarded = [
            ast.unparse(node)
            for node in ast.walk(method)
            if isinstance(node, ast.Attribute)
            and (
                ast.unparse(node.value) == "self._parameterNode"
                or (isinstance(node.value, ast.Name) and node.value.id in aliases)
            )
            and not _guarded(method, node, aliases)
        ]
        assert not unguarded, (
            f"{module}: {name} (run by a timer) uses the parameter node without testing it: {', '.join(unguarded)}"
        )
