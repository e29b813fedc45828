//! User files against the real S3 server: upload with the type checked against the bytes, size
//! limit, multipart above the part size, presigned download, owner-only access and delete.

mod support;

use orderflow::actors::Service;
use orderflow::auth::scopes;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{TestApp, TestEnv};

const MIB: usize = 1024 * 1024;

async fn upload(
    app: &TestApp,
    owner: Option<&str>,
    name: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    // Without an owner: no token at all.
    let client = match owner {
        Some(o) => as_owner(o),
        None => reqwest::Client::new(),
    };
    let resp = client
        .post(app.url("/v1/files"))
        .query(&[("name", name)])
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("upload: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

const FILE_SCOPES: [&str; 2] = [scopes::FILES_READ, scopes::FILES_WRITE];

/// A client whose token's subject is `owner`, with the file scopes.
fn as_owner(owner: &str) -> reqwest::Client {
    support::client_as(owner, &FILE_SCOPES)
}

fn no_redirects(owner: &str) -> reqwest::Client {
    support::client_builder_as(owner, &FILE_SCOPES)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The presigned link of a file, as `owner` asks for it (`None` when refused).
async fn link(app: &TestApp, owner: &str, id: &str) -> Result<String, u16> {
    let resp = no_redirects(owner)
        .get(app.url(&format!("/v1/files/{id}")))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    if resp.status().as_u16() != 303 {
        return Err(resp.status().as_u16());
    }
    Ok(resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned())
}

/// The bytes behind a presigned link (S3 itself checks the signature).
async fn download(url: &str) -> Vec<u8> {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .bytes()
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default()
}

async fn listed(app: &TestApp, owner: &str) -> usize {
    let v: Value = as_owner(owner)
        .get(app.url("/v1/files"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_default();
    v["items"].as_array().map(Vec::len).unwrap_or(usize::MAX)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_checked_stored_downloaded_by_their_owner_only_and_deleted() {
    let mut env = TestEnv::new().await;
    env.config.files.max_upload_bytes = (7 * MIB) as u64;
    let app = env.spawn(&[Service::Api]).await;

    // A PDF: stored, with its checksum, downloadable through a presigned link.
    let pdf = b"%PDF-1.4\n% a tiny test document\n%%EOF\n".to_vec();
    let (status, file) = upload(
        &app,
        Some("alice"),
        "scan.pdf",
        "application/pdf",
        pdf.clone(),
    )
    .await;
    assert_eq!(status, 201, "{file}");
    assert_eq!(file["content_type"], "application/pdf");
    assert_eq!(file["size_bytes"], pdf.len());
    assert_eq!(file["sha256"], hex(&Sha256::digest(&pdf)).as_str());
    assert_eq!(file["multipart"], false);
    let id = file["id"].as_str().unwrap_or_default().to_owned();
    let url = link(&app, "alice", &id)
        .await
        .unwrap_or_else(|s| panic!("{s}"));
    let downloaded = download(&url).await;
    assert_eq!(downloaded, pdf);

    // Another owner sees nothing of it.
    assert_eq!(link(&app, "bob", &id).await, Err(404));
    assert_eq!(listed(&app, "alice").await, 1);
    assert_eq!(listed(&app, "bob").await, 0);

    // Refused, and nothing stored: no owner, a renamed executable, a disallowed type, too large.
    let (status, problem) = upload(&app, None, "a.txt", "text/plain", b"hi".to_vec()).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("missing_token"))
    );
    let elf = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00".to_vec();
    let (status, problem) = upload(&app, Some("alice"), "report.pdf", "application/pdf", elf).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (415, Some("unsupported_file_type"))
    );
    let (status, problem) = upload(
        &app,
        Some("alice"),
        "a.zip",
        "application/zip",
        b"PK\x03\x04".to_vec(),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (415, Some("unsupported_file_type"))
    );
    let (status, _) = upload(
        &app,
        Some("alice"),
        "big.txt",
        "text/plain",
        vec![b'a'; 8 * MIB],
    )
    .await;
    assert_eq!(status, 413);
    let (status, problem) =
        upload(&app, Some("alice"), "a/b.txt", "text/plain", b"x".to_vec()).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("invalid_file_name"))
    );
    assert_eq!(
        listed(&app, "alice").await,
        1,
        "refused uploads store nothing"
    );
    assert_eq!(env.count("SELECT count(*) FROM files.user_files").await, 1);

    // Above the part size: a multipart upload that downloads whole.
    let text: Vec<u8> = (0..6 * MIB).map(|i| b'a' + (i % 26) as u8).collect();
    let (status, big) = upload(
        &app,
        Some("alice"),
        "notes.txt",
        "text/plain; charset=utf-8",
        text.clone(),
    )
    .await;
    assert_eq!(status, 201, "{big}");
    assert_eq!(big["multipart"], true);
    let big_id = big["id"].as_str().unwrap_or_default().to_owned();
    let url = link(&app, "alice", &big_id)
        .await
        .unwrap_or_else(|s| panic!("{s}"));
    let downloaded = download(&url).await;
    assert_eq!(
        hex(&Sha256::digest(&downloaded)),
        hex(&Sha256::digest(&text))
    );

    // Delete: only the owner; afterwards the file and its object are gone.
    let delete = |owner: &'static str, id: String| {
        let http = as_owner(owner);
        let url = app.url(&format!("/v1/files/{id}"));
        async move {
            http.delete(url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .status()
                .as_u16()
        }
    };
    let old_link = link(&app, "alice", &id)
        .await
        .unwrap_or_else(|s| panic!("{s}"));
    assert_eq!(delete("bob", id.clone()).await, 404);
    assert_eq!(delete("alice", id.clone()).await, 204);
    assert_eq!(link(&app, "alice", &id).await, Err(404));
    let gone = reqwest::get(&old_link)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(gone.status().as_u16(), 404, "the object is deleted too");
    assert_eq!(listed(&app, "alice").await, 1);

    app.app.shutdown().await;
    env.cleanup().await;
}
