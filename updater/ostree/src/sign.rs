//! ed25519 signatures in OSTree's layouts: detached commit signatures
//! (commitmeta `ostree.sign.ed25519`, type `aay`) and signed delta superblocks
//! (`OSTSGNDT`). Verification is always compiled (the device refuses unsigned
//! updates); signing is behind the `encode` feature (publisher only).

use ed25519_dalek::{Signature, VerifyingKey};

use crate::error::{Error, Result};
use crate::gvariant::{self as gv, VarArray};

/// The `a{sv}` key holding ed25519 signatures, type `aay`.
pub const ED25519_KEY: &str = "ostree.sign.ed25519";

/// Trusted and revoked public keys.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    trusted: Vec<VerifyingKey>,
    revoked: Vec<[u8; 32]>,
}

impl Trust {
    /// Builds the trust set from key-file texts (one base64 key per line).
    pub fn from_key_files(trusted: &str, revoked: Option<&str>) -> Result<Self> {
        let trusted = parse_public_keys(trusted, "trusted key file")?;
        if trusted.is_empty() {
            return Err(Error::BadKey {
                what: "trusted key file (no keys)",
            });
        }
        let revoked = match revoked {
            Some(t) => parse_public_keys(t, "revoked key file")?
                .iter()
                .map(VerifyingKey::to_bytes)
                .collect(),
            None => Vec::new(),
        };
        Ok(Trust { trusted, revoked })
    }

    pub fn trusted_count(&self) -> usize {
        self.trusted.len()
    }

    /// Succeeds iff any of `signatures` over `data` verifies with a trusted key
    /// that is not revoked.
    pub fn verify<'s>(
        &self,
        data: &[u8],
        signatures: impl IntoIterator<Item = &'s [u8]>,
    ) -> Result<()> {
        let mut seen = false;
        for sig in signatures {
            seen = true;
            let Ok(bytes) = <[u8; 64]>::try_from(sig) else {
                continue;
            };
            let sig = Signature::from_bytes(&bytes);
            for key in &self.trusted {
                // Rule: a revoked key never validates anything, even if also listed as trusted.
                if self.revoked.contains(&key.to_bytes()) {
                    continue;
                }
                if key.verify_strict(data, &sig).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(Error::Signature {
            why: if seen {
                "no signature verifies with a trusted, non-revoked key"
            } else {
                "not signed"
            },
        })
    }
}

/// Parses a key file: one base64 public key (32 bytes) per line, `#` comments
/// and blank lines ignored.
pub fn parse_public_keys(text: &str, what: &'static str) -> Result<Vec<VerifyingKey>> {
    let mut keys = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let raw = crate::base64::decode(line).ok_or(Error::BadKey { what })?;
        let arr: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| Error::BadKey { what })?;
        keys.push(VerifyingKey::from_bytes(&arr).map_err(|_| Error::BadKey { what })?);
    }
    Ok(keys)
}

/// The ed25519 signatures stored in an `a{sv}` (commitmeta or signed superblock).
pub fn signatures(dict: &[u8]) -> Result<Vec<&[u8]>> {
    match gv::lookup(dict, ED25519_KEY, "signature metadata")? {
        None => Ok(Vec::new()),
        Some((child, "aay")) => Ok(VarArray::parse(child, 1, "signature list")?
            .iter()
            .collect()),
        Some(_) => Err(Error::malformed(
            "signature metadata",
            "ostree.sign.ed25519 is not aay",
        )),
    }
}

#[cfg(feature = "encode")]
pub use signing::*;

#[cfg(feature = "encode")]
mod signing {
    use ed25519_dalek::Signer;
    pub use ed25519_dalek::SigningKey;

    use super::*;
    use crate::gvariant::Member;

    /// Parses a secret key file: base64(seed32 ‖ pub32) on the first key line.
    pub fn parse_secret_key(text: &str) -> Result<SigningKey> {
        let what = "secret key file";
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or(Error::BadKey { what })?;
        let raw = crate::base64::decode(line).ok_or(Error::BadKey { what })?;
        let arr: [u8; 64] = raw
            .as_slice()
            .try_into()
            .map_err(|_| Error::BadKey { what })?;
        let key = SigningKey::from_keypair_bytes(&arr).map_err(|_| Error::BadKey { what })?;
        Ok(key)
    }

    /// Secret and public key file lines for a 32-byte seed (libsodium layout).
    pub fn key_lines(seed: [u8; 32]) -> (String, String) {
        let key = SigningKey::from_bytes(&seed);
        (
            crate::base64::encode(&key.to_keypair_bytes()),
            crate::base64::encode(key.verifying_key().as_bytes()),
        )
    }

    pub fn sign(key: &SigningKey, data: &[u8]) -> [u8; 64] {
        key.sign(data).to_bytes()
    }

    /// Returns `dict` (an `a{sv}`, possibly empty) with `sig` added to its
    /// `ostree.sign.ed25519` list; other keys are kept, duplicates dropped.
    pub fn add_signature(dict: &[u8], sig: &[u8; 64]) -> Result<Vec<u8>> {
        let mut entries: Vec<(String, Vec<u8>, String)> = Vec::new();
        for e in VarArray::parse(dict, 8, "signature metadata")?.iter() {
            let [k, v] = gv::tuple(e, &[Member::VAR1, Member::VAR8], "signature metadata")?;
            let (child, ty) = gv::variant(v, "signature metadata")?;
            entries.push((
                gv::string(k, "signature metadata")?.to_owned(),
                child.to_vec(),
                ty.to_owned(),
            ));
        }
        let mut sigs: Vec<Vec<u8>> = signatures(dict)?.into_iter().map(<[u8]>::to_vec).collect();
        if !sigs.iter().any(|s| s == sig) {
            sigs.push(sig.to_vec());
        }
        let list = gv::enc_var_array(&sigs, 1);
        entries.retain(|(k, _, _)| k != ED25519_KEY);
        entries.push((ED25519_KEY.to_owned(), list, "aay".to_owned()));
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let refs: Vec<(&str, Vec<u8>, &str)> = entries
            .iter()
            .map(|(k, c, t)| (k.as_str(), c.clone(), t.as_str()))
            .collect();
        Ok(gv::enc_asv(&refs))
    }

    /// Signs a commit: returns its new detached metadata (`existing` commitmeta
    /// `a{sv}`, possibly empty, with the signature merged in).
    pub fn sign_commit(key: &SigningKey, commit: &[u8], existing: &[u8]) -> Result<Vec<u8>> {
        add_signature(existing, &sign(key, commit))
    }

    /// Signs a superblock file (plain or already signed): returns the signed
    /// envelope around the original unsigned bytes, keeping earlier signatures.
    pub fn sign_superblock(key: &SigningKey, file: &[u8]) -> Result<Vec<u8>> {
        let parsed = crate::delta::SuperblockFile::parse(file)?;
        let dict = add_signature(
            parsed.signatures.unwrap_or(&[]),
            &sign(key, parsed.unsigned),
        )?;
        Ok(signed_superblock(parsed.unsigned, &dict))
    }

    /// Wraps an unsigned superblock in the signed envelope `(taya{sv})`.
    pub fn signed_superblock(unsigned: &[u8], sig_dict: &[u8]) -> Vec<u8> {
        gv::enc_tuple(&[
            (&crate::delta::SIGNED_MAGIC, Member::U64),
            (unsigned, Member::VAR1),
            (sig_dict, Member::VAR8),
        ])
    }
}

#[cfg(all(test, feature = "encode"))]
mod tests {
    use super::*;
    use crate::delta::SuperblockFile;

    /// Sign then verify; wrong data, unknown key and revoked key all fail.
    #[test]
    fn sign_verify_round_trip() {
        let (secret, public) = key_lines([7; 32]);
        let (_, other_public) = key_lines([8; 32]);
        let key = parse_secret_key(&secret).unwrap();
        let sig = sign(&key, b"commit bytes");
        let dict = add_signature(&[], &sig).unwrap();
        // Merging twice keeps one copy.
        assert_eq!(add_signature(&dict, &sig).unwrap(), dict);
        let sigs = signatures(&dict).unwrap();
        let trust = Trust::from_key_files(&format!("# vendor\n\n{public}\n"), None).unwrap();
        trust.verify(b"commit bytes", sigs.iter().copied()).unwrap();
        assert!(trust.verify(b"other bytes", sigs.iter().copied()).is_err());
        assert!(trust.verify(b"commit bytes", []).is_err());
        let wrong = Trust::from_key_files(&other_public, None).unwrap();
        assert!(wrong.verify(b"commit bytes", sigs.iter().copied()).is_err());
        let revoked = Trust::from_key_files(&public, Some(&public)).unwrap();
        assert!(revoked
            .verify(b"commit bytes", sigs.iter().copied())
            .is_err());
        assert!(Trust::from_key_files("not-base64!", None).is_err());
        assert!(Trust::from_key_files("# only comments", None).is_err());
    }

    /// A signed superblock envelope parses back to the exact unsigned bytes.
    #[test]
    fn signed_envelope_round_trip() {
        let unsigned = b"pretend superblock".to_vec();
        let key = parse_secret_key(&key_lines([1; 32]).0).unwrap();
        let dict = add_signature(&[], &sign(&key, &unsigned)).unwrap();
        let file = signed_superblock(&unsigned, &dict);
        assert!(file.starts_with(b"OSTSGNDT"));
        let parsed = SuperblockFile::parse(&file).unwrap();
        assert_eq!(parsed.unsigned, unsigned);
        assert_eq!(parsed.signatures, Some(&dict[..]));
        // Signing again with a second key keeps both signatures and the bytes.
        let key2 = parse_secret_key(&key_lines([2; 32]).0).unwrap();
        let twice = sign_superblock(&key2, &file).unwrap();
        let p2 = SuperblockFile::parse(&twice).unwrap();
        assert_eq!(p2.unsigned, unsigned);
        assert_eq!(signatures(p2.signatures.unwrap()).unwrap().len(), 2);
        let cm = sign_commit(&key, b"commit", &[]).unwrap();
        let t = Trust::from_key_files(&key_lines([1; 32]).1, None).unwrap();
        t.verify(b"commit", signatures(&cm).unwrap()).unwrap();
    }
}
