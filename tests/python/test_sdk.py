"""The official Volcengine Python SDK (volcenginesdk-ecs) against the emulator binary.

Needs: pip install volcenginesdk-ecs pytest (this file installs nothing), and a built
binary: $ECS_EMULATOR_BIN, default target/debug/ecs-emulator. The emulator is started with
`--listen 127.0.0.1:0 --realism` (null for empty fields, no Result for operation actions, as
the real API may answer) and its first stdout line gives the address.
"""

import json
import os
import re
import subprocess
import threading
import time
import urllib.request
import uuid

import pytest
import volcenginesdkcore
import volcenginesdkecs
from volcenginesdkcore.rest import ApiException

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("ECS_EMULATOR_BIN", os.path.join(REPO, "target", "debug", "ecs-emulator"))
AK = "AKLTpython"
SK = "python-secret"
REGION = "cn-beijing"
DELAY_MS = 1000


def _first_line(proc, timeout):
    """readline() with a deadline, so a binary that never announces itself fails the test."""
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("line", proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return box.get("line", "")


@pytest.fixture(scope="module")
def emulator():
    if not os.access(BIN, os.X_OK):
        pytest.fail(f"emulator binary {BIN} not found; run `cargo build --bins` or set ECS_EMULATOR_BIN")
    proc = subprocess.Popen(
        [BIN, "--listen", "127.0.0.1:0",
         "--access-key", AK, "--secret-key", SK, "--realism",
         "--create-delay-ms", str(DELAY_MS), "--stop-delay-ms", str(DELAY_MS),
         "--start-delay-ms", str(DELAY_MS), "--delete-delay-ms", str(DELAY_MS)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = _first_line(proc, 20)
        m = re.match(r"emulator listening on http://(\S+)$", line.strip())
        assert m, f"unexpected first line {line!r}"
        yield m.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ecs(addr, sk=SK):
    cfg = volcenginesdkcore.Configuration()
    cfg.ak = AK
    cfg.sk = sk
    cfg.region = REGION
    cfg.host = addr
    cfg.scheme = "http"
    cfg.auto_retry = False
    return volcenginesdkecs.ECSApi(volcenginesdkcore.ApiClient(cfg))


def admin(addr, path):
    with urllib.request.urlopen(f"http://{addr}/_emulator/{path}", timeout=10) as r:
        return json.loads(r.read())


def describe(api, ids):
    req = volcenginesdkecs.DescribeInstancesRequest(instance_ids=ids)
    return api.describe_instances(req).instances or []


def wait_for(fn, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def status_of(api, iid):
    found = describe(api, [iid])
    return found[0].status if found else None


def test_run_describe_stop_delete(emulator):
    api = ecs(emulator)
    token = str(uuid.uuid4())
    run = api.run_instances(volcenginesdkecs.RunInstancesRequest(
        zone_id="cn-beijing-a",
        image_id="image-ubuntu",
        instance_type_id="ecs.g3i.large",
        instance_name="sdk-vm",
        count=1,
        client_token=token,
        network_interfaces=[volcenginesdkecs.NetworkInterfaceForRunInstancesInput(
            subnet_id="subnet-1", security_group_ids=["sg-1", "sg-2"])],
        volumes=[volcenginesdkecs.VolumeForRunInstancesInput(size=40, volume_type="ESSD_PL0")],
        tags=[volcenginesdkecs.TagForRunInstancesInput(key="owner", value="python sdk")],
    ))
    assert len(run.instance_ids) == 1
    iid = run.instance_ids[0]
    assert re.fullmatch(r"i-[a-z0-9]{20}", iid)

    [inst] = describe(api, [iid])
    assert inst.status == "CREATING"
    assert inst.zone_id == "cn-beijing-a"
    assert inst.instance_type_id == "ecs.g3i.large"
    assert [(t.key, t.value) for t in inst.tags] == [("owner", "python sdk")]
    assert inst.network_interfaces[0].security_group_ids == ["sg-1", "sg-2"]
    assert inst.network_interfaces[0].primary_ip_address
    wait_for(lambda: status_of(api, iid) == "RUNNING", "RUNNING")

    by_tag = api.describe_instances(volcenginesdkecs.DescribeInstancesRequest(
        tag_filters=[volcenginesdkecs.TagFilterForDescribeInstancesInput(
            key="owner", values=["python sdk", "other"])],
        max_results=100))
    assert iid in [i.instance_id for i in by_tag.instances]
    assert by_tag.total_count == len(by_tag.instances)
    none = api.describe_instances(volcenginesdkecs.DescribeInstancesRequest(
        tag_filters=[volcenginesdkecs.TagFilterForDescribeInstancesInput(
            key="owner", values=["nobody"])]))
    assert not none.instances

    # UntagResources as the SDK sends it (how the operator releases an orphaned VM).
    api.untag_resources(volcenginesdkecs.UntagResourcesRequest(
        resource_ids=[iid], resource_type="instance", tag_keys=["owner", "absent"]))
    [inst] = describe(api, [iid])
    assert not inst.tags

    stop = api.stop_instances(volcenginesdkecs.StopInstancesRequest(
        instance_ids=[iid], client_token=str(uuid.uuid4())))
    assert [(d.instance_id, d.error) for d in stop.operation_details] == [(iid, None)]
    assert status_of(api, iid) == "STOPPING"
    wait_for(lambda: status_of(api, iid) == "STOPPED", "STOPPED")

    delete = api.delete_instances(volcenginesdkecs.DeleteInstancesRequest(
        instance_ids=[iid], client_token=str(uuid.uuid4())))
    assert [(d.instance_id, d.error) for d in delete.operation_details] == [(iid, None)]
    wait_for(lambda: not describe(api, [iid]), "the instance to disappear")

    deletions = [d for d in admin(emulator, "deletions") if d["instance_id"] == iid]
    assert len(deletions) == 1
    calls = admin(emulator, "calls")
    assert {c["action"] for c in calls} >= {
        "RunInstances", "DescribeInstances", "UntagResources", "StopInstances",
        "DeleteInstances"}
    # The SDK really signed its telemetry headers and sent `+` for spaces; all accepted.
    assert all(c["code"] == "OK" for c in calls)


def test_per_instance_errors_are_parsed(emulator):
    api = ecs(emulator)
    resp = api.delete_instances(volcenginesdkecs.DeleteInstancesRequest(
        instance_ids=["i-doesnotexist00000000"], client_token=str(uuid.uuid4())))
    [detail] = resp.operation_details
    assert detail.instance_id == "i-doesnotexist00000000"
    assert detail.error.code == "InvalidInstance.NotFound"
    assert detail.error.message == "The specified instance does not exist."


def test_call_level_error(emulator):
    api = ecs(emulator)
    with pytest.raises(ApiException) as exc:
        api.delete_instance(volcenginesdkecs.DeleteInstanceRequest(instance_id="i-doesnotexist00000000"))
    assert exc.value.status == 404
    body = json.loads(exc.value.body)
    assert body["ResponseMetadata"]["Error"]["Code"] == "InvalidInstance.NotFound"


def test_wrong_secret_key_is_signature_does_not_match(emulator):
    api = ecs(emulator, sk="not-the-secret")
    with pytest.raises(ApiException) as exc:
        api.describe_instances(volcenginesdkecs.DescribeInstancesRequest())
    assert exc.value.status == 401
    err = json.loads(exc.value.body)["ResponseMetadata"]["Error"]
    assert err["Code"] == "SignatureDoesNotMatch"
    assert err["CodeN"] == 100010
