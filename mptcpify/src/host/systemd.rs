//! systemd units to cgroups, asked of systemd over D-Bus (no unit file or drop-in is written).
use anyhow::{Context as _, Result, anyhow};
use zbus::{
    Connection,
    fdo::PropertiesProxy,
    names::InterfaceName,
    zvariant::{OwnedObjectPath, OwnedValue, Value},
};

/// The kinds of unit that have a cgroup, by the suffix of their name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitType {
    Service,
    Scope,
    Slice,
    Socket,
    Mount,
    Swap,
}

impl UnitType {
    const ALL: [(&'static str, UnitType); 6] = [
        (".service", UnitType::Service),
        (".scope", UnitType::Scope),
        (".slice", UnitType::Slice),
        (".socket", UnitType::Socket),
        (".mount", UnitType::Mount),
        (".swap", UnitType::Swap),
    ];

    /// The type of `unit` (`nginx.service`); `None` for a type without a cgroup or a bare suffix.
    pub fn of(unit: &str) -> Option<Self> {
        Self::ALL.iter().find(|(suffix, _)| unit.len() > suffix.len() && unit.ends_with(suffix)).map(|&(_, t)| t)
    }

    /// The D-Bus interface that carries this type's `ControlGroup` and `Slice`.
    const fn interface(self) -> &'static str {
        match self {
            UnitType::Service => "org.freedesktop.systemd1.Service",
            UnitType::Scope => "org.freedesktop.systemd1.Scope",
            UnitType::Slice => "org.freedesktop.systemd1.Slice",
            UnitType::Socket => "org.freedesktop.systemd1.Socket",
            UnitType::Mount => "org.freedesktop.systemd1.Mount",
            UnitType::Swap => "org.freedesktop.systemd1.Swap",
        }
    }
}

/// The type of `unit`, or the error a user needs.
fn unit_type(unit: &str) -> Result<UnitType> {
    UnitType::of(unit).ok_or_else(|| {
        anyhow!(
            "{unit:?} is not a unit with a cgroup: give the full name, e.g. nginx.service, \
             user.slice or session-1.scope"
        )
    })
}

fn system_bus_error(e: zbus::Error) -> anyhow::Error {
    anyhow!(e).context("connecting to the system D-Bus to ask systemd about a unit (is systemd running?)")
}

/// The properties of `unit`, found with the manager's `method` (`GetUnit`: loaded units only;
/// `LoadUnit`: loads it from disk if needed). `None` when `GetUnit` finds no such unit.
async fn unit_properties(conn: &Connection, method: &str, unit: &str) -> Result<Option<PropertiesProxy<'static>>> {
    let reply = match conn
        .call_method(
            Some("org.freedesktop.systemd1"),
            "/org/freedesktop/systemd1",
            Some("org.freedesktop.systemd1.Manager"),
            method,
            &(unit,),
        )
        .await
    {
        Ok(reply) => reply,
        Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" => {
            return Ok(None);
        }
        Err(e) => return Err(anyhow!("asking systemd for {unit}: {e}")),
    };
    let path: OwnedObjectPath = reply.body().deserialize()?;
    let props = PropertiesProxy::builder(conn).destination("org.freedesktop.systemd1")?.path(path)?.build().await?;
    Ok(Some(props))
}

async fn string_property(props: &PropertiesProxy<'_>, iface: &'static str, name: &str) -> Result<String> {
    let value: OwnedValue = props
        .get(InterfaceName::from_static_str(iface)?, name)
        .await
        .with_context(|| format!("reading the unit's {name}"))?;
    String::try_from(value).with_context(|| format!("{name} is not a string"))
}

async fn running_cgroup(conn: &Connection, unit: &str) -> Result<Option<String>> {
    let iface = unit_type(unit)?.interface();
    let Some(props) = unit_properties(conn, "GetUnit", unit).await? else { return Ok(None) };
    let cgroup = string_property(&props, iface, "ControlGroup").await?;
    Ok(Some(cgroup).filter(|c| !c.is_empty()))
}

/// The cgroup of a running unit, relative to the cgroup2 root (e.g. `/system.slice/nginx.service`);
/// `None` when systemd has no such unit loaded or it is not running (so it has no cgroup).
pub async fn unit_cgroup(unit: &str) -> Result<Option<String>> {
    unit_type(unit)?;
    let conn = Connection::system().await.map_err(system_bus_error)?;
    running_cgroup(&conn, unit).await
}

/// The cgroup `unit` has when running, or, when it is not, the one it will get: its slice's
/// cgroup plus its name (how systemd lays out the tree). `None` if systemd knows no such unit.
/// The agent watches that path, so a unit that (re)starts later is covered as it appears.
pub async fn unit_cgroup_expected(unit: &str) -> Result<Option<String>> {
    let unit_type = unit_type(unit)?;
    let conn = Connection::system().await.map_err(system_bus_error)?;
    if let Some(running) = running_cgroup(&conn, unit).await? {
        return Ok(Some(running));
    }
    let Some(props) = unit_properties(&conn, "LoadUnit", unit).await? else { return Ok(None) };
    if string_property(&props, "org.freedesktop.systemd1.Unit", "LoadState").await? == "not-found" {
        return Ok(None);
    }
    if unit_type == UnitType::Slice {
        return Ok(Some(slice_path(unit)));
    }
    let slice = string_property(&props, unit_type.interface(), "Slice").await?;
    let slice = if slice.is_empty() { "-.slice".to_owned() } else { slice };
    Ok(Some(format!("{}/{unit}", slice_path(&slice).trim_end_matches('/'))))
}

/// Whether systemd manages this system (the test of `sd_booted(3)`).
pub fn is_running() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

/// The slice of a cgroup path (`/user.slice/user-1000.slice/session-2.scope` is in
/// `user-1000.slice`); `-.slice` (the root) when no component is one.
pub fn slice_of(cgroup: &str) -> String {
    cgroup.rsplit('/').find(|c| UnitType::of(c) == Some(UnitType::Slice)).unwrap_or("-.slice").to_owned()
}

/// Starts the transient scope `name` in `slice` holding `pid`, as `systemd-run --scope` does:
/// systemd then owns its cgroup, under the slice's resource limits, and removes it once empty.
pub async fn start_scope(name: &str, slice: &str, pid: u32, description: &str) -> Result<()> {
    let conn = Connection::system().await.map_err(system_bus_error)?;
    let properties: Vec<(&str, Value<'_>)> = vec![
        ("PIDs", Value::from(vec![pid])),
        ("Slice", Value::from(slice)),
        ("Description", Value::from(description)),
        ("CollectMode", Value::from("inactive-or-failed")),
    ];
    let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
    conn.call_method(
        Some("org.freedesktop.systemd1"),
        "/org/freedesktop/systemd1",
        Some("org.freedesktop.systemd1.Manager"),
        "StartTransientUnit",
        &(name, "fail", properties, aux),
    )
    .await
    .with_context(|| format!("asking systemd to start the scope {name} in {slice}"))?;
    Ok(())
}

/// Where systemd puts a slice: `a-b.slice` is `/a.slice/a-b.slice`, `-.slice` is the root.
fn slice_path(slice: &str) -> String {
    let Some(stem) = slice.strip_suffix(".slice").filter(|s| *s != "-") else { return "/".into() };
    let mut path = String::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push_str(&format!("/{prefix}.slice"));
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_nest_by_their_dashes() {
        assert_eq!(slice_path("system.slice"), "/system.slice");
        assert_eq!(slice_path("user-1000.slice"), "/user.slice/user-1000.slice");
        assert_eq!(slice_path("a-b-c.slice"), "/a.slice/a-b.slice/a-b-c.slice");
        assert_eq!(slice_path("-.slice"), "/");
    }

    #[test]
    fn a_cgroups_slice_is_its_innermost_slice() {
        assert_eq!(slice_of("/user.slice/user-1000.slice/session-2.scope"), "user-1000.slice");
        assert_eq!(slice_of("/system.slice/nginx.service"), "system.slice");
        assert_eq!(slice_of("/limited.slice"), "limited.slice");
        assert_eq!(slice_of("/"), "-.slice");
        assert_eq!(slice_of("/mptcpify/run-7"), "-.slice");
    }

    #[test]
    fn unit_types_map_to_their_interface() {
        assert_eq!(unit_type("nginx.service").unwrap().interface(), "org.freedesktop.systemd1.Service");
        assert_eq!(unit_type("user-1000.slice").unwrap().interface(), "org.freedesktop.systemd1.Slice");
        let e = unit_type("nginx").unwrap_err().to_string();
        assert!(e.contains("nginx.service"), "{e}");
        assert!(unit_type("x.target").is_err());
        assert!(unit_type(".service").is_err(), "a suffix alone is no unit");
    }
}
