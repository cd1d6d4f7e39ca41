//! Listing a node's children: one at a time or many in one round trip,
//! with listings past xenstore's 4096-byte payload paged by
//! DIRECTORY_PART as libxenstore does.

use super::{Tx, XsClient, XsError, split_names};
use crate::xs_wire::{MessageType, nul_terminated};

impl XsClient {
    /// A node's children, `None` if it does not exist; long listings are
    /// paged with DIRECTORY_PART as libxenstore does.
    pub fn directory(&mut self, tx: Tx, path: &str) -> Result<Option<Vec<String>>, XsError> {
        match self.request(
            MessageType::Directory,
            tx,
            nul_terminated([path.as_bytes()]),
            path,
        ) {
            Ok(list) => Ok(Some(split_names(&list))),
            Err(e) if e.is_errno("ENOENT") => Ok(None),
            Err(e) if e.is_errno("E2BIG") => self.directory_parts(tx, path).map(Some),
            Err(e) => Err(e),
        }
    }

    /// From offset 0, asking again from what was received until a reply
    /// ends the list with an empty name; starting over if the node's
    /// generation changed meanwhile.
    fn directory_parts(&mut self, tx: Tx, path: &str) -> Result<Vec<String>, XsError> {
        'again: loop {
            let mut list: Vec<u8> = Vec::new();
            let mut generation: Option<Vec<u8>> = None;
            loop {
                let offset = list.len().to_string();
                let payload = nul_terminated([path.as_bytes(), offset.as_bytes()]);
                let reply = self.request(MessageType::DirectoryPart, tx, payload, path)?;
                let split = reply.iter().position(|b| *b == 0).unwrap_or(reply.len());
                let this_generation = reply[..split].to_vec();
                if generation.as_ref().is_some_and(|g| *g != this_generation) {
                    continue 'again;
                }
                generation = Some(this_generation);
                list.extend_from_slice(reply.get(split + 1..).unwrap_or_default());
                if list.len() <= 1 || list[list.len() - 2] == 0 {
                    return Ok(split_names(&list));
                }
            }
        }
    }

    /// Several nodes' children in one round trip (`None` for a node that
    /// does not exist); a listing too long for one answer is paged after.
    pub fn directory_many(
        &mut self,
        tx: Tx,
        paths: &[String],
    ) -> Result<Vec<Option<Vec<String>>>, XsError> {
        let requests = paths
            .iter()
            .map(|path| (MessageType::Directory, nul_terminated([path.as_bytes()])))
            .collect();
        let answers = self.pipeline(tx, requests, paths)?;
        answers
            .into_iter()
            .zip(paths)
            .map(|(answer, path)| match answer {
                Ok(list) => Ok(Some(split_names(&list))),
                Err(errno) if errno == "ENOENT" => Ok(None),
                Err(errno) if errno == "E2BIG" => self.directory_parts(tx, path).map(Some),
                Err(errno) => Err(XsError::Errno {
                    errno,
                    operation: "DIRECTORY",
                    path: path.clone(),
                }),
            })
            .collect()
    }
}
