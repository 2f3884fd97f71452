"""The operator CLI against moto (behind the rehearsal's emulated AWS): `status` sees the private side out of
sync, `reconcile --dry-run` shows the change without making it, `reconcile` makes it, `status` then sees I1–I3
hold, `check` passes; and `check` names what to fix for a missing target group and a port mismatch. Then the
stored bindings: `bindings apply` (dry run, first write, no change, a change, a refused binding, a conflict with
another), `bindings list`, `status` reading them, `bindings remove`.

    python test_cli.py BIN_DIR
"""

import json
import os
import re
import subprocess
import sys

import procs
import rehearse

results = []


def expect(name, cond, detail=""):
    results.append(cond)
    print(f"{'ok  ' if cond else 'FAIL'} {name}" + (f": {detail}" if detail and not cond else ""))


def main():
    bin_dir = sys.argv[1]
    procs.install_cleanup()
    r = rehearse.Rehearsal("happy", 3, None, open(os.devnull, "w"))
    try:
        r.start_account(health_checks=False)
        ips = ["127.0.1.1", "127.0.1.2", "127.0.1.3"]
        r.register(r.tgs["pub-blue"], ips, events=False)
        # Tagged as the private side's stack tags them: the operator's change policy changes nothing else.
        r.tag_managed(managed(r))
        def cli(*args, bindings=None, table=None, stored=False, env_over=None):
            env = {"PATH": os.environ.get("PATH", ""), "AWS_REGION": rehearse.REGION, "AWS_ACCESS_KEY_ID": "AKIDCLI",
                   "AWS_SECRET_ACCESS_KEY": "x", "AWS_ENDPOINT_URL": r.endpoint, "AWS_EC2_METADATA_DISABLED": "true",
                   "BLUEGREEN_MIRROR_TABLE": table or r.table, "USER": "operator"}
            if not stored:
                env["BLUEGREEN_MIRROR_BINDINGS"] = json.dumps(bindings or r.bindings)
            for k, v in (env_over or {}).items():
                if v is None:
                    env.pop(k, None)
                else:
                    env[k] = v
            command = " ".join(a for a in args if not a.startswith("-") or a == "--dry-run")
            # Each command runs under the operator policies infra/operator.yaml gives it: the read policy alone,
            # or with the change policy; on the table it is pointed at (as deployed for that table).
            table_arg = args[args.index("--table") + 1] if "--table" in args else None
            r.grant_operator("AKIDCLI", change=command.startswith(CHANGES) and "--dry-run" not in command,
                             table=table_arg or table or r.table)
            p = subprocess.run([os.path.join(bin_dir, "bluegreen-mirror"), *args], env=env, capture_output=True,
                               timeout=60)
            return p.returncode, p.stdout.decode(), p.stderr.decode()

        def members(tg):
            return sorted(t for t, *_ in r.world.target_states(r.tgs[tg]))

        code, out, _ = cli("status", "--json")
        s = json.loads(out)["bindings"][0]
        expect("status exits 3 when out of sync, naming itself in --json", code == 3 and json.loads(out)["command"] == "status", out)
        expect("status shows the pending registrations", len(s["pending"]["register"].get("prv-blue", [])) == 3, out)

        code, out, _ = cli("reconcile", "--dry-run", "--json")
        expect("reconcile --dry-run changes nothing", code == 0 and members("prv-blue") == [], out)

        # Shadow mode: an observed binding is shown as ELB has it, and its reconcile writes nothing.
        observed = json.loads(json.dumps(r.bindings))
        observed["bindings"][0]["mode"] = "observe"
        code, out, _ = cli("status", bindings=observed)
        expect("status marks an observed binding and its drift", code == 3 and "OUT OF SYNC  (observe" in out, out)
        code, out, _ = cli("reconcile", "--json", bindings=observed)
        row = json.loads(out)["bindings"][0]
        expect("reconcile of an observed binding writes nothing and says what it would have",
               code == 0 and members("prv-blue") == [] and row.get("mode") == "observe"
               and any(w.startswith("would have: register ") for w in row.get("warnings", [])), out)

        code, out, _ = cli("reconcile")
        expect("reconcile mirrors the public group", code == 0 and members("prv-blue") == ips, out)
        expect("reconcile reports what it did", "registered 3" in out, out)

        code, out, _ = cli("status")
        expect("status exits 0 in sync", code == 0 and "IN SYNC" in out and "PRIVATE" in out, out)

        code, out, _ = cli("check")
        expect("check passes a good binding", code == 0 and "ok:" in out, out)

        missing = json.loads(json.dumps(r.bindings))
        missing["bindings"][0]["pairs"][1]["private_target_group"] = r.tgs["prv-green"].replace("/prv-green/", "/gone/")
        code, out, _ = cli("check", bindings=missing)
        expect("check names a missing target group", code == 3 and "does not exist" in out, out)

        elb = r.client("elbv2", r.moto_url, "PROVISION")
        vpc = elb.describe_target_groups(TargetGroupArns=[r.tgs["prv-green"]])["TargetGroups"][0]["VpcId"]
        other = elb.create_target_group(Name="prv-other-port", Protocol="HTTP", Port=9999, VpcId=vpc, TargetType="ip")
        mismatch = json.loads(json.dumps(r.bindings))
        mismatch["bindings"][0]["pairs"][1]["private_target_group"] = other["TargetGroups"][0]["TargetGroupArn"]
        code, out, _ = cli("check", "--json", bindings=mismatch)
        row = json.loads(out)["bindings"][0]
        expect("check names a port mismatch", code == 3 and "both must target the task's port; give prv-other-port port 18080" in row.get("error", ""), out)

        code, out, _ = cli("check", table="bluegreen-mirror-gone")
        expect("check names a missing state table", code == 3 and "state table bluegreen-mirror-gone does not exist" in out,
               out)
        code, out, _ = cli("check", "--table", "bluegreen-mirror-gone")
        expect("--table is the table checked, over the environment's",
               code == 3 and "state table bluegreen-mirror-gone does not exist" in out, out)
        code, out, err = cli("status", env_over={"AWS_REGION": None, "AWS_DEFAULT_REGION": None,
                                                 "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"})
        expect("no region: exit 2, saying how to give one", code == 2 and "--region" in err and not out, err)
        code, out, err = cli("status", "--region", rehearse.REGION, env_over={"AWS_REGION": None,
                                                                          "AWS_CONFIG_FILE": "/nonexistent"})
        expect("--region gives the region", code == 0, out + err)
        code, out, err = cli("status", env_over={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"})
        expect("an unreachable endpoint: exit 1, saying what to check",
               code == 1 and "could not reach" in out + err and "AWS_ENDPOINT_URL" in out + err, out + err)

        elsewhere = json.loads(json.dumps(r.bindings))
        elsewhere["bindings"][0]["private_production_route"] = {"listener": r.listeners["public-prod"]}
        elsewhere["bindings"][0]["private_test_route"] = {"listener": r.listeners["public-test"]}
        code, out, _ = cli("check", bindings=elsewhere)
        expect("check names a private listener on another load balancer",
               code == 3 and "not (only) to the binding's private load balancer" in out, out)

        code, out, err = cli("frobnicate")
        expect("a usage error exits 2 on stderr", code == 2 and "Usage:" in err and not out, err)
        code, out, err = cli("--help")
        expect("--help exits 0 on stdout, naming every command",
               code == 0 and not err and all(c in out for c in ("check", "status", "reconcile", "bindings")), out + err)
        code, out, _ = cli("bindings", "apply", "-h")
        expect("each subcommand has its own help", code == 0 and "FILE" in out and "--dry-run" in out, out)
        code, out, _ = cli("--version")
        with open(os.path.join(rehearse.ROOT, "Cargo.toml")) as f:
            release = re.search(r'^version = "(.+)"$', f.read(), re.M).group(1)
        expect("--version names the release and the commit",
               code == 0 and re.fullmatch(rf"bluegreen-mirror {re.escape(release)} \(commit [0-9a-f]{{12}}\)", out.strip()), out)
        code, out, _ = cli("completions", "bash")
        expect("completions for bash", code == 0 and "complete" in out and "bluegreen-mirror" in out, out[:300])

        stored_bindings(r, cli, expect)
        refused = r.world.iam.denied()
        expect("IAM refused no command's call under the operator policies it was given", not refused, refused)
        # What test_iam.py reads to find the operator statements no command needed.
        with open(os.path.join(rehearse.ROOT, "target", "rehearsal-cli-iam.json"), "w") as f:
            json.dump({"iam": r.world.iam.report()}, f)
    finally:
        procs.kill_all()
    failed = results.count(False)
    print(f"cli: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


# The commands that change things: they run with operator.yaml's change policy as well as its read policy.
CHANGES = ("reconcile", "bindings apply", "bindings remove")


def managed(r):
    """The private side's resources, which carry the bluegreen-mirror:managed tag."""
    b = r.bindings["bindings"][0]
    return ([p["private_target_group"] for p in b["pairs"]] + list(b["private_production_route"].values())
            + list(b.get("private_test_route", {}).values()))


def stored_bindings(r, cli, expect):
    """`bindings apply|list|remove` against the state table, and the functions' commands reading from it."""
    def write(name, doc):
        path = os.path.join(r.run_dir, name)
        with open(path, "w") as f:
            json.dump(doc, f)
        return path

    def listed():
        code, out, _ = cli("bindings", "list", "--json", stored=True)
        return {b["binding"]: b for b in json.loads(out)["bindings"]} if code == 0 else None

    good = write("bindings.json", r.bindings)
    code, _, err = cli("bindings", "list")
    expect("bindings refuses an installation configured by environment", code == 2
           and "reads its bindings from BLUEGREEN_MIRROR_BINDINGS" in err, err)

    r.client("elbv2", r.moto_url, "PROVISION").remove_tags(ResourceArns=managed(r), TagKeys=["bluegreen-mirror:managed"])
    code, out, _ = cli("bindings", "apply", good, stored=True)
    expect("apply refuses private resources without the managed tag, naming the command that tags them",
           code == 3 and "not tagged bluegreen-mirror:managed=true" in out and "aws elbv2 add-tags" in out
           and listed() == {}, out)
    r.tag_managed(managed(r))

    code, out, err = cli("bindings", "apply", write("not-json.json", "{"), stored=True)
    expect("a file that is not a bindings document is a usage error", code == 2 and "not-json.json" in err and not out,
           out + err)
    code, out, _ = cli("bindings", "apply", good, "--dry-run", stored=True)
    expect("apply --dry-run shows the addition and writes nothing", code == 0 and "add" in out and listed() == {}, out)
    code, out, _ = cli("bindings", "apply", good, stored=True)
    rows = listed()
    expect("apply checks and stores the binding", code == 0 and "1 written" in out
           and rows.get("web/web-bg", {}).get("version") == 1 and rows["web/web-bg"]["usable"], out)
    code, out, _ = cli("bindings", "apply", good, stored=True)
    expect("applying the same file again changes nothing", code == 0 and "unchanged" in out and "0 written" in out, out)

    changed = json.loads(json.dumps(r.bindings))
    changed["bindings"][0]["health_timeout_seconds"] = 120
    code, out, _ = cli("bindings", "apply", write("changed.json", changed), stored=True)
    expect("a changed binding is written under the next version", code == 0 and "change" in out
           and listed()["web/web-bg"]["version"] == 2, out)

    broken = json.loads(json.dumps(r.bindings))
    broken["bindings"][0]["pairs"][1]["private_target_group"] = r.tgs["prv-green"].replace("/prv-green/", "/gone/")
    code, out, _ = cli("bindings", "apply", write("broken.json", broken), stored=True)
    expect("a binding that fails its check is refused and nothing is written",
           code == 3 and "REFUSED" in out and "does not exist" in out and listed()["web/web-bg"]["version"] == 2, out)

    twin = json.loads(json.dumps(r.bindings))
    twin["bindings"][0]["deployment_group"] = "web-bg-twin"
    code, out, _ = cli("bindings", "apply", write("twin.json", twin), stored=True)
    expect("a binding that claims another's private target groups is refused",
           code == 3 and "conflicts with the stored bindings" in out and "web/web-bg-twin" not in listed(), out)

    code, out, _ = cli("status", stored=True)
    expect("status reads the stored bindings", code == 0 and "web/web-bg  IN SYNC" in out, out)

    code, out, _ = cli("bindings", "remove", "web", "web-bg", stored=True)
    expect("remove removes the stored binding", code == 0 and listed() == {}, out)
    code, out, _ = cli("bindings", "remove", "web", "web-bg", stored=True)
    expect("removing it again says there is none", code == 3 and "no stored binding web/web-bg" in out, out)


if __name__ == "__main__":
    sys.exit(main())
