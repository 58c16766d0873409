// The official Volcengine Go SDK against the emulator binary, beside the Python SDK
// (tests/python): the calls the operator makes, and the answers the real API documents.
//
// Needs a built emulator: $ECS_EMULATOR_BIN, default ../../target/debug/ecs-emulator. It is
// started with `--listen 127.0.0.1:0 --realism` (null for empty fields, no Result for
// operation actions) and its first stdout line gives the address.
package sdktest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/volcengine/volcengine-go-sdk/service/ecs"
	"github.com/volcengine/volcengine-go-sdk/volcengine"
	"github.com/volcengine/volcengine-go-sdk/volcengine/credentials"
	"github.com/volcengine/volcengine-go-sdk/volcengine/session"
	"github.com/volcengine/volcengine-go-sdk/volcengine/volcengineerr"
)

const (
	ak     = "AKLTgo"
	sk     = "go-secret"
	region = "cn-beijing"
)

var addr string

func TestMain(m *testing.M) {
	bin := os.Getenv("ECS_EMULATOR_BIN")
	if bin == "" {
		bin = filepath.Join("..", "..", "target", "debug", "ecs-emulator")
	}
	cmd := exec.Command(bin, "--listen", "127.0.0.1:0", "--access-key", ak, "--secret-key", sk,
		"--realism", "--create-delay-ms", "300", "--stop-delay-ms", "300", "--delete-delay-ms", "300")
	out, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "emulator %s: %v (cargo build --bins, or set ECS_EMULATOR_BIN)\n", bin, err)
		os.Exit(2)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	m2 := regexp.MustCompile(`emulator listening on http://(\S+)`).FindStringSubmatch(line)
	if m2 == nil {
		fmt.Fprintf(os.Stderr, "unexpected first line %q\n", line)
		_ = cmd.Process.Kill()
		os.Exit(2)
	}
	addr = m2[1]
	code := m.Run()
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	os.Exit(code)
}

func client(t *testing.T, secret string) *ecs.ECS {
	t.Helper()
	cfg := volcengine.NewConfig().
		WithRegion(region).
		WithCredentials(credentials.NewStaticCredentials(ak, secret, "")).
		WithEndpoint(addr).
		WithDisableSSL(true).
		WithMaxRetries(0)
	sess, err := session.NewSession(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ecs.New(sess)
}

func admin(t *testing.T, path string, into interface{}) {
	t.Helper()
	r, err := http.Get("http://" + addr + "/_emulator/" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	if err := json.NewDecoder(r.Body).Decode(into); err != nil {
		t.Fatal(err)
	}
}

func runOne(t *testing.T, c *ecs.ECS, name string, tags map[string]string) string {
	t.Helper()
	in := &ecs.RunInstancesInput{
		ZoneId:         volcengine.String("cn-beijing-a"),
		ImageId:        volcengine.String("image-ubuntu"),
		InstanceTypeId: volcengine.String("ecs.g3i.large"),
		InstanceName:   volcengine.String(name),
		Count:          volcengine.Int32(1),
		ClientToken:    volcengine.String("go-" + name),
		NetworkInterfaces: []*ecs.NetworkInterfaceForRunInstancesInput{{
			SubnetId:         volcengine.String("subnet-1"),
			SecurityGroupIds: volcengine.StringSlice([]string{"sg-1"}),
		}},
		Volumes: []*ecs.VolumeForRunInstancesInput{{
			Size: volcengine.Int32(40), VolumeType: volcengine.String("ESSD_PL0"),
		}},
	}
	for k, v := range tags {
		in.Tags = append(in.Tags, &ecs.TagForRunInstancesInput{Key: volcengine.String(k), Value: volcengine.String(v)})
	}
	out, err := c.RunInstances(in)
	if err != nil {
		t.Fatalf("RunInstances: %v", err)
	}
	if len(out.InstanceIds) != 1 || !regexp.MustCompile(`^i-[a-z0-9]{20}$`).MatchString(*out.InstanceIds[0]) {
		t.Fatalf("InstanceIds %v", volcengine.StringValueSlice(out.InstanceIds))
	}
	return *out.InstanceIds[0]
}

func describe(t *testing.T, c *ecs.ECS, ids ...string) []*ecs.InstanceForDescribeInstancesOutput {
	t.Helper()
	out, err := c.DescribeInstances(&ecs.DescribeInstancesInput{InstanceIds: volcengine.StringSlice(ids)})
	if err != nil {
		t.Fatalf("DescribeInstances: %v", err)
	}
	return out.Instances
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !f(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestLifecycleAsTheOperatorDrivesIt(t *testing.T) {
	c := client(t, sk)
	id := runOne(t, c, "go-vm", map[string]string{"owner": "go sdk"})
	inst := describe(t, c, id)
	if len(inst) != 1 || *inst[0].Status != "CREATING" || *inst[0].NetworkInterfaces[0].Type != "primary" {
		t.Fatalf("after RunInstances: %v", inst)
	}
	waitFor(t, "RUNNING", func() bool { return *describe(t, c, id)[0].Status == "RUNNING" })

	if _, err := c.ModifyInstanceAttribute(&ecs.ModifyInstanceAttributeInput{
		InstanceId: volcengine.String(id), DeletionProtection: volcengine.Bool(true)}); err != nil {
		t.Fatalf("ModifyInstanceAttribute (answered without Result): %v", err)
	}
	if !*describe(t, c, id)[0].DeletionProtection {
		t.Fatal("deletion protection not on")
	}
	if _, err := c.ModifyInstanceAttribute(&ecs.ModifyInstanceAttributeInput{
		InstanceId: volcengine.String(id), DeletionProtection: volcengine.Bool(false)}); err != nil {
		t.Fatal(err)
	}

	if _, err := c.UntagResources(&ecs.UntagResourcesInput{
		ResourceIds: volcengine.StringSlice([]string{id}), ResourceType: volcengine.String("instance"),
		TagKeys: volcengine.StringSlice([]string{"owner", "absent"})}); err != nil {
		t.Fatalf("UntagResources: %v", err)
	}
	if tags := describe(t, c, id)[0].Tags; len(tags) != 0 {
		t.Fatalf("tags left: %v (null reads as none)", tags)
	}

	stop, err := c.StopInstances(&ecs.StopInstancesInput{
		InstanceIds: volcengine.StringSlice([]string{id}), ClientToken: volcengine.String("go-stop")})
	if err != nil || len(stop.OperationDetails) != 1 || stop.OperationDetails[0].Error != nil {
		t.Fatalf("StopInstances: %v %v", stop, err)
	}
	waitFor(t, "STOPPED", func() bool { return *describe(t, c, id)[0].Status == "STOPPED" })

	del, err := c.DeleteInstances(&ecs.DeleteInstancesInput{
		InstanceIds: volcengine.StringSlice([]string{id, "i-doesnotexist00000000"}),
		ClientToken: volcengine.String("go-del")})
	if err != nil {
		t.Fatalf("DeleteInstances: %v", err)
	}
	got := map[string]string{}
	for _, d := range del.OperationDetails {
		code := "OK"
		if d.Error != nil {
			code = *d.Error.Code
		}
		got[*d.InstanceId] = code
	}
	want := map[string]string{id: "OK", "i-doesnotexist00000000": "InvalidInstance.NotFound"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("OperationDetails %v, want %v", got, want)
	}
	waitFor(t, "the VM to go", func() bool { return len(describe(t, c, id)) == 0 })

	var deletions []map[string]interface{}
	admin(t, "deletions", &deletions)
	n := 0
	for _, d := range deletions {
		if d["instance_id"] == id {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d deletions of %s", n, id)
	}
}

func TestTagFiltersAndPaging(t *testing.T) {
	c := client(t, sk)
	want := map[string]bool{}
	for i := 0; i < 5; i++ {
		want[runOne(t, c, fmt.Sprintf("go-page-%d", i), map[string]string{"team": "go-paging"})] = true
	}
	got := map[string]bool{}
	pages := 0
	var token *string
	for {
		out, err := c.DescribeInstances(&ecs.DescribeInstancesInput{
			TagFilters: []*ecs.TagFilterForDescribeInstancesInput{{
				Key: volcengine.String("team"), Values: volcengine.StringSlice([]string{"go-paging", "other"})}},
			MaxResults: volcengine.Int32(2), NextToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, i := range out.Instances {
			got[*i.InstanceId] = true
		}
		if out.NextToken == nil || *out.NextToken == "" {
			break
		}
		token = out.NextToken
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || pages != 3 {
		t.Fatalf("%d pages: %v, want %v", pages, got, want)
	}
	none, err := c.DescribeInstances(&ecs.DescribeInstancesInput{
		TagFilters: []*ecs.TagFilterForDescribeInstancesInput{{
			Key: volcengine.String("team"), Values: volcengine.StringSlice([]string{"nobody"})}}})
	if err != nil || len(none.Instances) != 0 {
		t.Fatalf("no match: %v %v", none, err)
	}
}

func TestCallLevelErrorsCarryCodeStatusAndRequestId(t *testing.T) {
	_, err := client(t, "not-the-secret").DescribeInstances(&ecs.DescribeInstancesInput{})
	rf, ok := err.(volcengineerr.RequestFailure)
	if !ok || rf.Code() != "SignatureDoesNotMatch" || rf.StatusCode() != 401 || rf.RequestID() == "" {
		t.Fatalf("wrong secret: %#v", err)
	}
	_, err = client(t, sk).UntagResources(&ecs.UntagResourcesInput{
		ResourceIds:  volcengine.StringSlice(strings.Split(strings.Repeat("i-x,", 51), ",")[:51]),
		ResourceType: volcengine.String("instance"), TagKeys: volcengine.StringSlice([]string{"k"})})
	rf, ok = err.(volcengineerr.RequestFailure)
	if !ok || rf.Code() != "LimitExceeded.MaximumResourceIds" || rf.StatusCode() != 400 {
		t.Fatalf("51 ResourceIds: %#v", err)
	}
}

// apiCode is the error code of a failed call, "" for none (and for an error that is not
// the API's).
func apiCode(err error) string {
	if rf, ok := err.(volcengineerr.RequestFailure); ok {
		return rf.Code()
	}
	return ""
}

func tagsOf(i *ecs.InstanceForDescribeInstancesOutput) map[string]string {
	m := map[string]string{}
	for _, t := range i.Tags {
		m[volcengine.StringValue(t.Key)] = volcengine.StringValue(t.Value)
	}
	return m
}

// The in-place update as the operator drives it (docs/ecs-update-api.md): name and
// description without a stop, user tags added and removed, and a type change on a VM
// stopped with KeepCharging, then started again.
func TestInPlaceUpdateAsTheOperatorDrivesIt(t *testing.T) {
	c := client(t, sk)
	id := runOne(t, c, "go-upd", map[string]string{"owner": "go sdk"})
	waitFor(t, "RUNNING", func() bool { return *describe(t, c, id)[0].Status == "RUNNING" })

	// Name and description: one ModifyInstanceAttribute, the VM keeps running.
	if _, err := c.ModifyInstanceAttribute(&ecs.ModifyInstanceAttributeInput{
		InstanceId: volcengine.String(id), InstanceName: volcengine.String("go-upd-renamed"),
		Description: volcengine.String("web tier, owner=go sdk"), ClientToken: volcengine.String("go-attr-1")}); err != nil {
		t.Fatalf("ModifyInstanceAttribute: %v", err)
	}
	inst := describe(t, c, id)[0]
	if volcengine.StringValue(inst.InstanceName) != "go-upd-renamed" ||
		volcengine.StringValue(inst.Description) != "web tier, owner=go sdk" || *inst.Status != "RUNNING" {
		t.Fatalf("after ModifyInstanceAttribute: %v", inst)
	}
	_, err := c.ModifyInstanceAttribute(&ecs.ModifyInstanceAttributeInput{
		InstanceId: volcengine.String(id), Description: volcengine.String("1 starts with a digit")})
	if apiCode(err) != "InvalidDescription.Malformed" {
		t.Fatalf("a malformed Description: %v", err)
	}

	// User tags: TagResources adds (and overwrites), UntagResources removes.
	if _, err := c.TagResources(&ecs.TagResourcesInput{
		ResourceIds: volcengine.StringSlice([]string{id}), ResourceType: volcengine.String("instance"),
		Tags: []*ecs.TagForTagResourcesInput{
			{Key: volcengine.String("env"), Value: volcengine.String("dev")},
			{Key: volcengine.String("team"), Value: volcengine.String("go")}}}); err != nil {
		t.Fatalf("TagResources: %v", err)
	}
	want := map[string]string{"owner": "go sdk", "env": "dev", "team": "go"}
	if got := tagsOf(describe(t, c, id)[0]); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("tags after TagResources: %v, want %v", got, want)
	}
	if _, err := c.UntagResources(&ecs.UntagResourcesInput{
		ResourceIds: volcengine.StringSlice([]string{id}), ResourceType: volcengine.String("instance"),
		TagKeys: volcengine.StringSlice([]string{"env", "team"})}); err != nil {
		t.Fatalf("UntagResources: %v", err)
	}
	want = map[string]string{"owner": "go sdk"}
	if got := tagsOf(describe(t, c, id)[0]); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("tags after UntagResources: %v, want %v", got, want)
	}

	// A RUNNING VM's type is not changed.
	_, err = c.ModifyInstanceSpec(&ecs.ModifyInstanceSpecInput{
		InstanceId: volcengine.String(id), InstanceTypeId: volcengine.String("ecs.g3i.xlarge")})
	if rf, ok := err.(volcengineerr.RequestFailure); !ok || rf.Code() != "InvalidInstanceStatus" || rf.StatusCode() != 400 {
		t.Fatalf("ModifyInstanceSpec on a RUNNING VM: %#v", err)
	}

	stop, err := c.StopInstances(&ecs.StopInstancesInput{
		InstanceIds: volcengine.StringSlice([]string{id}), StoppedMode: volcengine.String("KeepCharging"),
		ClientToken: volcengine.String("go-upd-stop")})
	if err != nil || len(stop.OperationDetails) != 1 || stop.OperationDetails[0].Error != nil {
		t.Fatalf("StopInstances: %v %v", stop, err)
	}
	waitFor(t, "STOPPED", func() bool { return *describe(t, c, id)[0].Status == "STOPPED" })

	_, err = c.ModifyInstanceSpec(&ecs.ModifyInstanceSpecInput{
		InstanceId: volcengine.String(id), InstanceTypeId: volcengine.String("ecs.g3i.xlarge"),
		DryRun: volcengine.Bool(true)})
	if apiCode(err) != "DryRunOperation" {
		t.Fatalf("ModifyInstanceSpec DryRun: %v", err)
	}
	if got := volcengine.StringValue(describe(t, c, id)[0].InstanceTypeId); got != "ecs.g3i.large" {
		t.Fatalf("DryRun changed the type to %s", got)
	}
	spec, err := c.ModifyInstanceSpec(&ecs.ModifyInstanceSpecInput{
		InstanceId: volcengine.String(id), InstanceTypeId: volcengine.String("ecs.g3i.xlarge"),
		ClientToken: volcengine.String("go-upd-spec")})
	if err != nil {
		t.Fatalf("ModifyInstanceSpec: %v", err)
	}
	if volcengine.StringValue(spec.InstanceId) != id || volcengine.StringValue(spec.OrderId) == "" {
		t.Fatalf("ModifyInstanceSpec output: %v", spec)
	}
	inst = describe(t, c, id)[0]
	if volcengine.StringValue(inst.InstanceTypeId) != "ecs.g3i.xlarge" || *inst.Status != "STOPPED" {
		t.Fatalf("after ModifyInstanceSpec: %v", inst)
	}
	// The same ClientToken again: the recorded answer, the same order.
	again, err := c.ModifyInstanceSpec(&ecs.ModifyInstanceSpecInput{
		InstanceId: volcengine.String(id), InstanceTypeId: volcengine.String("ecs.g3i.xlarge"),
		ClientToken: volcengine.String("go-upd-spec")})
	if err != nil || volcengine.StringValue(again.OrderId) != volcengine.StringValue(spec.OrderId) {
		t.Fatalf("replayed ModifyInstanceSpec: %v %v", again, err)
	}

	start, err := c.StartInstances(&ecs.StartInstancesInput{
		InstanceIds: volcengine.StringSlice([]string{id}), ClientToken: volcengine.String("go-upd-start")})
	if err != nil || len(start.OperationDetails) != 1 || start.OperationDetails[0].Error != nil {
		t.Fatalf("StartInstances: %v %v", start, err)
	}
	waitFor(t, "RUNNING again", func() bool { return *describe(t, c, id)[0].Status == "RUNNING" })
	if got := volcengine.StringValue(describe(t, c, id)[0].InstanceTypeId); got != "ecs.g3i.xlarge" {
		t.Fatalf("type after the start: %s", got)
	}
}
