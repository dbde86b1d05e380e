//! The stock `virsh` against the daemon: host information and domain
//! definitions, checked against what libvirt 9.0 prints.

mod common;

use std::time::Duration;

use common::*;

const SECS: Duration = Duration::from_secs(10);
const UUID: &str = "bcddda92-2bd4-42ea-b525-077265d27c4c";

fn define(d: &Daemon, name: &str, uuid: &str) -> std::path::PathBuf {
    let file = d.tree.path(&format!("{name}.xml"));
    std::fs::write(&file, domain_xml(name, uuid)).unwrap();
    let (code, out, err) = virsh(&d.tree.sock("libvirt-sock"), &["define", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("Domain '{name}' defined from {}", file.display()));
    file
}

#[test]
fn host_commands_answer_like_libvirt() {
    if !have_virsh() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let (code, out, err) = virsh(&rw, &["version"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Using API: QEMU 9.0.0"), "{out}");
    // The QEMU release whose XML defaults the daemon follows (tools gate on it).
    assert!(out.contains("Running hypervisor: QEMU 7.2.0"), "{out}");
    let (_, out, _) = virsh(&rw, &["hostname"]);
    assert_eq!(out.trim(), nix::unistd::gethostname().unwrap().to_string_lossy());
    let (_, out, _) = virsh(&rw, &["uri"]);
    assert_eq!(out.trim(), uri(&rw));
    let (code, out, _) = virsh(&rw, &["nodeinfo"]);
    assert_eq!(code, 0);
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(out.contains(&format!("CPU(s):              {cpus}\n")), "{out}");
    assert!(out.contains(&format!("CPU model:           {}\n", std::env::consts::ARCH)), "{out}");
    assert!(out.contains("Memory size:         "), "{out}");
    let (code, out, _) = virsh(&rw, &["capabilities"]);
    assert_eq!(code, 0);
    assert!(out.contains("<domain type='kvm'/>") && out.contains("<arch>x86_64</arch>"), "{out}");
    let (code, out, _) = virsh(&rw, &["maxvcpus"]);
    assert_eq!(code, 0);
    assert!(out.trim().parse::<u32>().unwrap() >= 1);
    let (code, out, _) = virsh(&rw, &["freecell"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("KiB"), "{out}");
}

/// The first number on the line of `out` that starts with `label` (after trimming).
fn kib_after(out: &str, label: &str) -> u64 {
    let line = out.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("{label}: {out}"));
    line[line.find(label).unwrap() + label.len()..].split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn host_memory_figures_agree() {
    if !have_virsh() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let total = kib_after(&virsh(&rw, &["nodeinfo"]).1, "Memory size:");
    let caps = virsh(&rw, &["capabilities"]).1;
    let cells: Vec<u64> = caps
        .split("<memory unit='KiB'>")
        .skip(1)
        .map(|rest| rest.split('<').next().unwrap().parse().unwrap())
        .collect();
    assert!(!cells.is_empty(), "{caps}");
    assert_eq!(total, cells.iter().sum::<u64>(), "nodeinfo's memory is not the sum of the cells:\n{caps}");
    let nodes = caps.matches("<cell id=").count();
    assert_eq!(kib_after(&virsh(&rw, &["nodeinfo"]).1, "NUMA cell(s):"), nodes as u64);

    // Free memory moves between calls; the views must agree within 5%.
    let free = kib_after(&virsh(&rw, &["freecell"]).1, "Total:");
    let all = virsh(&rw, &["freecell", "--all"]).1;
    let per_cell = kib_after(&all, "Total:");
    assert!(free <= total && per_cell <= total, "free {free} / {per_cell} of {total}");
    assert!(free.abs_diff(per_cell) <= total / 20, "getFreeMemory says {free} KiB, the cells {per_cell} KiB:\n{all}");
}

#[test]
fn every_name_define_accepts_is_stored_and_longer_ones_are_refused_at_define() {
    if !have_virsh() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let longest = "n".repeat(libvirtd::domain::MAX_NAME_BYTES);
    assert_eq!(longest.len(), 246, "the longest name is `.NAME.xml.new` within NAME_MAX");
    define(&d, &longest, UUID);
    assert!(d.tree.path(&format!("etc/qemu/{longest}.xml")).exists());
    assert_eq!(virsh(&rw, &["domstate", &longest]).1, "shut off\n\n");
    for len in [247, 255] {
        let name = "m".repeat(len);
        let file = d.tree.path("long.xml");
        std::fs::write(&file, domain_xml(&name, "c1b2c3d4-0000-4000-8000-000000000001")).unwrap();
        let (code, _, err) = virsh(&rw, &["define", file.to_str().unwrap()]);
        assert_eq!(code, 1, "{len}");
        assert!(
            err.contains(&format!("domain name is {len} bytes long, the most that can be stored is 246")),
            "{len}: {err}"
        );
    }
    assert_eq!(virsh(&rw, &["list", "--all", "--name"]).1.trim(), longest);
}

#[test]
fn a_domain_is_defined_inspected_and_undefined() {
    if !have_virsh() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    define(&d, "base-x", UUID);
    let (_, out, _) = virsh(&rw, &["list", "--all"]);
    assert_eq!(out, " Id   Name     State\n-------------------------\n -    base-x   shut off\n\n");
    let (_, out, _) = virsh(&rw, &["list"]);
    assert!(!out.contains("base-x"), "an inactive domain in the active list: {out}");
    let (code, out, err) = virsh(&rw, &["dominfo", "base-x"]);
    assert_eq!(code, 0, "{err}");
    let expected = format!(
        "Id:             -\nName:           base-x\nUUID:           {UUID}\nOS Type:        hvm\nState:          shut off\n\
         CPU(s):         1\nMax memory:     131072 KiB\nUsed memory:    131072 KiB\nPersistent:     yes\n\
         Autostart:      disable\nManaged save:   no\nSecurity model: none\nSecurity DOI:   0\n\n"
    );
    assert_eq!(out, expected);
    assert_eq!(virsh(&rw, &["domstate", "--reason", "base-x"]).1, "shut off (unknown)\n\n");
    assert_eq!(virsh(&rw, &["domstate", "base-x"]).1, "shut off\n\n");
    assert_eq!(virsh(&rw, &["domuuid", "base-x"]).1.trim(), UUID);
    assert_eq!(virsh(&rw, &["domname", UUID]).1.trim(), "base-x");
    assert_eq!(virsh(&rw, &["domid", "base-x"]).1.trim(), "-");
    let (_, xml, _) = virsh(&rw, &["dumpxml", "base-x"]);
    assert!(
        xml.contains(&format!("<uuid>{UUID}</uuid>")) && xml.contains("<memory unit='KiB'>131072</memory>"),
        "{xml}"
    );
    assert!(xml.contains("<clock offset='utc'/>") && xml.contains("<memballoon model='none'/>"), "{xml}");
    let (_, out, _) = virsh(&rw, &["autostart", "base-x"]);
    assert_eq!(out.trim(), "Domain 'base-x' marked as autostarted");
    assert!(virsh(&rw, &["dominfo", "base-x"]).1.contains("Autostart:      enable"));
    assert!(virsh(&rw, &["list", "--all", "--autostart"]).1.contains("base-x"));
    let (_, out, _) = virsh(&rw, &["autostart", "--disable", "base-x"]);
    assert_eq!(out.trim(), "Domain 'base-x' unmarked as autostarted");
    let (code, out, _) = virsh(&rw, &["undefine", "base-x"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "Domain 'base-x' has been undefined");
    let (code, _, err) = virsh(&rw, &["dominfo", "base-x"]);
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "error: failed to get domain 'base-x'");
    assert!(!d.tree.path("etc/qemu/base-x.xml").exists());
}

#[test]
fn the_read_only_socket_inspects_but_refuses_every_change() {
    if !have_virsh() {
        return;
    }
    let d = Daemon::start("", &[]);
    let file = define(&d, "base-r", UUID);
    let ro = d.tree.sock("libvirt-sock-ro");
    assert!(virsh(&ro, &["list", "--all"]).1.contains("base-r"));
    assert_eq!(virsh(&ro, &["dominfo", "base-r"]).0, 0);
    assert_eq!(virsh(&ro, &["dumpxml", "base-r"]).0, 0);
    for (args, api) in [
        (vec!["define", file.to_str().unwrap()], "virDomainDefineXML"),
        (vec!["undefine", "base-r"], "virDomainUndefineFlags"),
        (vec!["autostart", "base-r"], "virDomainSetAutostart"),
    ] {
        let (code, _, err) = virsh(&ro, &args);
        assert_eq!(code, 1, "{args:?}");
        assert!(
            err.contains(&format!("error: operation forbidden: read only access prevents {api}")),
            "{args:?}: {err}"
        );
    }
    let (code, _, err) = virsh(&ro, &["dumpxml", "--security-info", "base-r"]);
    assert_eq!(code, 1);
    assert!(err.contains("operation forbidden: virDomainGetXMLDesc with secure flag"), "{err}");
    // Still defined, still not autostarted.
    assert!(virsh(&d.tree.sock("libvirt-sock"), &["dominfo", "base-r"]).1.contains("Autostart:      disable"));
    // Each refusal is audited with the client's identity; the call itself
    // was refused by the frontend, so the broker records it as a denial.
    let uid = nix::unistd::getuid();
    for api in ["virDomainDefineXML", "virDomainUndefineFlags", "virDomainSetAutostart"] {
        let needles = ["op=denied", "sock=\"ro\"", &format!("uid={uid} "), &format!("api=\"{api}\""), "res=failed"];
        assert!(d.tree.audit(&needles, SECS).is_some(), "no denial audited for {api}");
    }
    assert!(d.tree.audit(&["op=undefine"], Duration::from_secs(1)).is_none(), "the broker was asked to undefine");
}

#[test]
fn bad_xml_gets_libvirts_errors() {
    if !have_virsh() {
        return;
    }
    let d = Daemon::start("", &[]);
    let rw = d.tree.sock("libvirt-sock");
    let write = |name: &str, text: &str| {
        let p = d.tree.path(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let good = domain_xml("base-y", UUID);

    let malformed = write("malformed.xml", "<domain type='kvm'>\n  <name>x</name>\n  <memory>1</memory>\n");
    let (code, _, err) = virsh(&rw, &["define", &malformed]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!("error: Failed to define domain from {malformed}\nerror: (domain_definition):")),
        "{err}"
    );

    let graphics = write("graphics.xml", &good.replace("<devices>", "<devices><graphics type='vnc'/>"));
    let (code, _, err) = virsh(&rw, &["define", &graphics]);
    assert_eq!(code, 1);
    assert!(
        err.contains("error: unsupported configuration: <graphics> devices are not supported by this daemon"),
        "{err}"
    );

    let bogus = write("bogus.xml", &good.replace("type='kvm'", "type='bogus'"));
    assert!(virsh(&rw, &["define", &bogus]).2.contains("error: unsupported configuration: invalid domain type bogus"));

    let unknown = write("unknown.xml", &good.replace("<devices>", "<devices><foo/>"));
    let (code, _, err) = virsh(&rw, &["define", "--validate", &unknown]);
    assert_eq!(code, 1);
    assert!(
        err.contains("error: XML document failed to validate against schema: Extra element foo in devices"),
        "{err}"
    );
    assert_eq!(virsh(&rw, &["list", "--all", "--name"]).1.trim(), "", "nothing may be defined by failures");
    let (code, _, err) = virsh(&rw, &["define", &unknown]);
    assert_eq!(code, 0, "{err}");
    assert!(!virsh(&rw, &["dumpxml", "base-y"]).1.contains("foo"), "unknown elements are dropped");

    let other_uuid = write("clash.xml", &domain_xml("base-y", "00000000-0000-4000-8000-000000000001"));
    let (code, _, err) = virsh(&rw, &["define", &other_uuid]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("error: operation failed: domain 'base-y' already exists with uuid {UUID}")),
        "{err}"
    );
}

#[test]
fn definitions_survive_a_daemon_restart_and_are_audited() {
    if !have_virsh() {
        return;
    }
    let mut d = Daemon::start("", &[]);
    define(&d, "base-p", UUID);
    let uid = nix::unistd::getuid();
    assert!(
        d.tree
            .audit(
                &["op=define", "vm=\"base-p\"", &format!("uuid=\"{UUID}\""), &format!("uid={uid} "), "res=success"],
                SECS
            )
            .is_some()
    );
    let (_, before, _) = virsh(&d.tree.sock("libvirt-sock"), &["dumpxml", "base-p"]);
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait_exit(SECS).unwrap().success());
    let tree = std::mem::replace(&mut d.tree, Tree::new());
    let d2 = Daemon::start_in(tree, &[]);
    let (_, after, _) = virsh(&d2.tree.sock("libvirt-sock"), &["dumpxml", "base-p"]);
    assert_eq!(after, before);
    assert!(virsh(&d2.tree.sock("libvirt-sock"), &["list", "--all"]).1.contains("base-p"));
}

#[test]
fn procedures_the_daemon_does_not_implement_say_so_as_libvirt_does() {
    if !have_virsh() {
        return;
    }
    let d = Daemon::start("", &[]);
    let (rw, ro) = (d.tree.sock("libvirt-sock"), d.tree.sock("libvirt-sock-ro"));
    let argv = d.tree.path("argv");
    std::fs::write(&argv, "qemu-system-x86_64 -m 128\n").unwrap();
    let (code, _, err) = virsh(&rw, &["domxml-from-native", "qemu-argv", argv.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "error: this function is not supported by the connection driver: virConnectDomainXMLFromNative"
    );
    // Read-only rules come first: the call is a change libvirt refuses read-only.
    let (code, _, err) = virsh(&ro, &["domxml-from-native", "qemu-argv", argv.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "error: operation forbidden: read only access prevents virConnectDomainXMLFromNative");
    // virsh falls back from virConnectListAllInterfaces on NO_SUPPORT to the
    // older call, and reports that one's answer: a fallback, not a protocol error.
    let (code, _, err) = virsh(&ro, &["iface-list"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("error: this function is not supported by the connection driver: virConnectNumOfInterfaces"),
        "{err}"
    );
    assert!(!err.contains("unknown procedure"), "{err}");
}
