//! Attaching and detaching through `xl` (xl(1): `block-attach`,
//! `block-detach`), with xenstore read before and after: an attachment
//! already made is not made twice, a device id another backend holds is
//! refused, and a detach is checked to have happened.

use super::{
    AttachRequest, DetachRequest, Toolstack, ToolstackError, backend_path, detach_kind,
    existing_attachment, is_closing, vanished,
};
use crate::apply::command::run;
use crate::observe::params;
use crate::xs_client::XsClient;

pub struct XlToolstack {
    client: XsClient,
    /// The `xl` to run (a path, or looked up on PATH).
    pub program: String,
    /// Detach without waiting for the guest (`xl block-detach --force`).
    pub force_detach: bool,
}

impl XlToolstack {
    pub fn connect(program: String) -> Result<XlToolstack, ToolstackError> {
        let client = XsClient::connect().map_err(ToolstackError::Connect)?;
        Ok(XlToolstack::with_client(client, program))
    }

    pub fn with_client(client: XsClient, program: String) -> XlToolstack {
        XlToolstack {
            client,
            program,
            force_detach: false,
        }
    }

    fn run(&self, args: &[String]) -> Result<(), ToolstackError> {
        run(&self.program, args, None)?;
        Ok(())
    }
}

/// The disk spec xl takes (xl-disk-configuration(5)); `target=` comes last
/// because it may hold commas.
pub fn xl_disk_spec(request: &AttachRequest) -> String {
    // xl knows only r/ro and w/rw: `w!` is xendisk's acceptance of sharing.
    let access = if request.mode.is_writable() {
        "rw"
    } else {
        "r"
    };
    format!(
        "format={}, vdev={}, access={access}, target={}",
        request.format, request.vdev, request.target
    )
}

// xl is always given the domid, never the domain's name: xl reads a name
// made of digits as a domid (a domain named `3` is not domid 3) and one
// that starts with `-` as an option.
impl Toolstack for XlToolstack {
    fn attach(&mut self, request: &AttachRequest) -> Result<(), ToolstackError> {
        if let Some(existing) =
            existing_attachment(&mut self.client, 0, request.domid, request.devid)?
        {
            // xl picks the backend kind itself (qdisk for an image file,
            // with a format before the path in `params`), so the same
            // target in the same format under any kind is this
            // attachment, made already.
            if params::parse(&existing.params).path == request.target
                && params::format(existing.kind, &existing.params) == Ok(request.format)
                && !existing.closing
            {
                return Ok(());
            }
            return Err(existing.occupies(request));
        }
        self.run(&[
            "block-attach".into(),
            request.domid.to_string(),
            xl_disk_spec(request),
        ])
    }

    fn detach(&mut self, request: &DetachRequest) -> Result<(), ToolstackError> {
        let kind = detach_kind(request)?;
        let backend = backend_path(kind, request.domid, request.devid);
        if self.client.directory(0, &backend)?.is_none() {
            return Err(vanished(request, backend));
        }
        // The device id, which is what xenstore keys on; xl takes it as
        // well as a vdev name.
        // Without --force, libxl waits for the guest to close the device
        // and fails if it does not (`libxl_device_disk_safe_remove`).
        let mut args = vec!["block-detach".to_owned()];
        if self.force_detach {
            args.push("--force".into());
        }
        args.extend([request.domid.to_string(), request.devid.to_string()]);
        self.run(&args)?;
        // xl returns once the backend has closed and libxl has removed its
        // nodes, or is removing them; anything else is not a detach, and
        // the steps after this one must not take the disk for free.
        if self.client.directory(0, &backend)?.is_none() {
            return Ok(());
        }
        let online = self.client.read(0, &format!("{backend}/online"))?;
        let state = self.client.read(0, &format!("{backend}/state"))?;
        if is_closing(online.as_deref(), state.as_deref()) {
            return Ok(());
        }
        Err(ToolstackError::StillAttached {
            domain: request.domain.clone(),
            domid: request.domid,
            vdev: request.vdev.clone(),
            path: backend,
            seen: format!(
                "online {}, state {}",
                online.as_deref().unwrap_or("missing"),
                state.as_deref().unwrap_or("missing")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{Format, Mode};

    #[test]
    fn the_disk_spec_names_the_format() {
        let mut request = AttachRequest {
            domain: "guest1".into(),
            domid: 4,
            vdev: "xvdb".into(),
            devid: 51728,
            target: "/var/lib/xen/images/a,b.qcow2".into(),
            mode: Mode::Read,
            format: Format::Qcow2,
        };
        assert_eq!(
            xl_disk_spec(&request),
            "format=qcow2, vdev=xvdb, access=r, target=/var/lib/xen/images/a,b.qcow2"
        );
        request.format = Format::Raw;
        request.mode = Mode::WriteShared;
        assert_eq!(
            xl_disk_spec(&request),
            "format=raw, vdev=xvdb, access=rw, target=/var/lib/xen/images/a,b.qcow2"
        );
    }
}
