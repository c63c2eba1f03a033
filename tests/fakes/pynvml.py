"""A fake `pynvml` (nvidia-ml-py) for the agent's tests: put tests/fakes first on sys.path.

Configure it through the module globals (reset() restores the defaults):
  FAIL_INIT   nvmlInit raises NVMLError_LibraryNotFound, as on a host without the NVIDIA driver
  DEVICES     one dict per GPU: name, util (%), used, total (bytes), temp (C), power_mw (milliwatts), and
              optionally compute / graphics: [(pid, used bytes or None)], the processes with a context on it
  FAILING     {(gpu index, function name)} calls that raise NVMLError
"""
from types import SimpleNamespace

NVML_TEMPERATURE_GPU = 0


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_Uninitialized(NVMLError):
    pass


FAIL_INIT = False
DEVICES = []
FAILING = set()
init_calls = 0
shutdown_calls = 0
_initialized = False


def reset():
    global FAIL_INIT, DEVICES, FAILING, init_calls, shutdown_calls, _initialized
    FAIL_INIT = False
    DEVICES = [
        {"name": "NVIDIA H100 80GB HBM3", "util": 87, "used": 1 << 30, "total": 80 << 30, "temp": 61,
         "power_mw": 312500},
        {"name": b"NVIDIA A10", "util": 3, "used": 0, "total": 24 << 30, "temp": 35, "power_mw": 21000},
    ]
    FAILING = set()
    init_calls = shutdown_calls = 0
    _initialized = False


reset()


def nvmlInit():
    global init_calls, _initialized
    init_calls += 1
    if FAIL_INIT:
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")
    _initialized = True


def nvmlShutdown():
    global shutdown_calls, _initialized
    if not _initialized:
        raise NVMLError_Uninitialized("Uninitialized")
    shutdown_calls += 1
    _initialized = False


def _device(handle, call):
    if not _initialized:
        raise NVMLError_Uninitialized("Uninitialized")
    if (handle, call) in FAILING:
        raise NVMLError(f"{call} failed on GPU {handle}")
    return DEVICES[handle]


def nvmlDeviceGetCount():
    if not _initialized:
        raise NVMLError_Uninitialized("Uninitialized")
    return len(DEVICES)


def nvmlDeviceGetHandleByIndex(index):
    if not _initialized:
        raise NVMLError_Uninitialized("Uninitialized")
    if not 0 <= index < len(DEVICES):
        raise NVMLError("Invalid Argument")
    return index  # the real one returns an opaque pointer


def nvmlDeviceGetName(handle):
    return _device(handle, "nvmlDeviceGetName")["name"]


def nvmlDeviceGetUtilizationRates(handle):
    return SimpleNamespace(gpu=_device(handle, "nvmlDeviceGetUtilizationRates")["util"], memory=0)


def nvmlDeviceGetMemoryInfo(handle):
    d = _device(handle, "nvmlDeviceGetMemoryInfo")
    return SimpleNamespace(used=d["used"], total=d["total"], free=d["total"] - d["used"])


def nvmlDeviceGetTemperature(handle, sensor):
    if sensor != NVML_TEMPERATURE_GPU:
        raise NVMLError("Invalid Argument")
    return _device(handle, "nvmlDeviceGetTemperature")["temp"]


def nvmlDeviceGetPowerUsage(handle):
    return _device(handle, "nvmlDeviceGetPowerUsage")["power_mw"]


def _running(handle, call, which):
    # The real ones return c_nvmlProcessInfo_t objects: pid, usedGpuMemory (None where the driver cannot say,
    # e.g. Windows WDDM), gpuInstanceId, computeInstanceId.
    return [SimpleNamespace(pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
            for pid, used in _device(handle, call).get(which, ())]


def nvmlDeviceGetComputeRunningProcesses(handle):
    return _running(handle, "nvmlDeviceGetComputeRunningProcesses", "compute")


def nvmlDeviceGetGraphicsRunningProcesses(handle):
    return _running(handle, "nvmlDeviceGetGraphicsRunningProcesses", "graphics")


DRIVER_VERSION = "550.54.15"


def nvmlSystemGetDriverVersion():
    return DRIVER_VERSION
