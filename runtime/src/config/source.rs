//! Reading the config's source: the file and its per-environment override, iii's default
//! syntax, `${VAR}` expansion, and the top-level sections an override replaces.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_saphyr::{Location, MessageFormatter, PropertySyntax, Spanned, UserMessageFormatter};
use topiq_adapter::TriggerName;

use super::raw::{
    RawApi, RawConsole, RawFile, RawFunction, RawModule, RawRuns, RawSchedules, RawTelemetry,
    RawTrigger,
};
use super::{ConfigError, ConfigLocation, service};

/// `config.yaml` + `production` → `config.production.yaml`, in the same folder.
pub(super) fn override_path(path: &Path, environment: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let extension = path
        .extension()
        .map(|ext| ext.to_string_lossy().into_owned())
        .unwrap_or_else(|| "yaml".into());
    path.with_file_name(format!("{stem}.{environment}.{extension}"))
}

pub(super) struct SourceFile {
    pub(super) name: String,
    pub(super) text: String,
}

impl SourceFile {
    pub(super) fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Ok(Self {
            name: path.display().to_string(),
            text,
        })
    }

    pub(super) fn parse(
        &self,
        variables: &HashMap<String, String>,
    ) -> Result<RawFile, ConfigError> {
        let text = rewrite_iii_defaults(&self.text);
        let mut options = serde_saphyr::Options::default();
        options.property_syntax = PropertySyntax::Braced;
        let options = options.with_properties(variables.clone());
        let mut failed_at = None;
        let mut raw: RawFile =
            serde_saphyr::with_deserializer_from_str_with_options(&text, options, |deserializer| {
                serde_path_to_error::deserialize(deserializer).map_err(|err| {
                    failed_at = Some(err.path().to_string());
                    err.into_inner()
                })
            })
            .map_err(|err| {
                let key = match failed_at.as_deref() {
                    None | Some(".") | Some("") => "(top level)".to_owned(),
                    // `Spanned<T>` adds a `value` level that is not in the file.
                    Some(path) => path.strip_suffix(".value").unwrap_or(path).to_owned(),
                };
                let location = err.location().map(|at| at.line()).unwrap_or(0);
                let column = err.location().map(|at| at.column()).unwrap_or(0);
                let message = UserMessageFormatter.format_message(&err).into_owned();
                let mut render = serde_saphyr::RenderOptions::default();
                render.source_name = Some(&self.name);
                // The rendered error repeats the message on its first line; keep the source lines.
                let rendered = err.render_with_options(render);
                let snippet = rendered
                    .lines()
                    .skip_while(|line| !line.trim_start().starts_with("-->"))
                    .collect::<Vec<_>>()
                    .join("\n");
                ConfigError::Invalid {
                    location: ConfigLocation {
                        file: self.name.clone(),
                        line: location,
                        column,
                    },
                    key,
                    message,
                    snippet: (!snippet.is_empty()).then_some(snippet),
                }
            })?;
        service::expand_quoted(&mut raw, &text, &self.name, variables)?;
        Ok(raw)
    }
}

/// The process environment, as the properties `${VAR}` expands from (variables whose name or
/// value is not UTF-8 cannot be referenced).
pub(super) fn process_environment() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect()
}

/// Rewrites iii's `${VAR:default}` into the compose form `${VAR:-default}`, so both work.
/// Only adds characters inside `${...}`, so line numbers stay right.
pub(super) fn rewrite_iii_defaults(text: &str) -> Cow<'_, str> {
    if !text.contains("${") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let (before, reference) = rest.split_at(start);
        out.push_str(before);
        let body = &reference[2..];
        let name_len = body
            .bytes()
            .take_while(|byte| byte.is_ascii_alphanumeric() || *byte == b'_')
            .count();
        let after_name = &body[name_len..];
        let iii_default = name_len > 0
            && after_name.starts_with(':')
            && !after_name[1..].starts_with(['-', '+', '?']);
        out.push_str("${");
        out.push_str(&body[..name_len]);
        if iii_default {
            out.push_str(":-");
            rest = &after_name[1..];
        } else {
            rest = after_name;
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The top-level sections, each with the file it came from.
pub(super) struct Sections {
    pub(super) modules: Option<(String, Vec<RawModule>)>,
    pub(super) triggers: Option<(String, BTreeMap<TriggerName, RawTrigger>)>,
    pub(super) functions: Option<(String, BTreeMap<String, RawFunction>)>,
    pub(super) api: Option<(String, RawApi)>,
    pub(super) console: Option<(String, RawConsole)>,
    pub(super) telemetry: Option<(String, RawTelemetry)>,
    pub(super) runs: Option<(String, RawRuns)>,
    pub(super) schedules: Option<(String, RawSchedules)>,
}

impl RawFile {
    pub(super) fn into_sections(self, file: &str) -> Sections {
        Sections {
            modules: self.modules.map(|modules| (file.to_owned(), modules)),
            triggers: self.triggers.map(|triggers| (file.to_owned(), triggers)),
            functions: self.functions.map(|functions| (file.to_owned(), functions)),
            api: self.api.map(|api| (file.to_owned(), api)),
            console: self.console.map(|console| (file.to_owned(), console)),
            telemetry: self.telemetry.map(|telemetry| (file.to_owned(), telemetry)),
            runs: self.runs.map(|runs| (file.to_owned(), runs)),
            schedules: self.schedules.map(|schedules| (file.to_owned(), schedules)),
        }
    }
}

impl Sections {
    /// These sections, and `base`'s where these have none.
    pub(super) fn over(self, base: Sections) -> Sections {
        Sections {
            modules: self.modules.or(base.modules),
            triggers: self.triggers.or(base.triggers),
            functions: self.functions.or(base.functions),
            api: self.api.or(base.api),
            console: self.console.or(base.console),
            telemetry: self.telemetry.or(base.telemetry),
            runs: self.runs.or(base.runs),
            schedules: self.schedules.or(base.schedules),
        }
    }
}

pub(super) fn at(file: &str, location: &Location) -> ConfigLocation {
    ConfigLocation {
        file: file.to_owned(),
        line: location.line(),
        column: location.column(),
    }
}

pub(super) fn spanned_at<T>(file: &str, spanned: &Spanned<T>) -> ConfigLocation {
    at(file, &spanned.referenced)
}
