"""OTLP's trace messages (opentelemetry-proto 1.45.2: ``common/v1``, ``resource/v1``,
``trace/v1``, ``collector/trace/v1``), in a descriptor pool of trustmesh's own.

Why not import ``opentelemetry.proto``: ``xds-protos`` (Envoy's protos, for the gateway's
ext_authz) ships an older copy of the same files at the same paths, and whichever
package pip installs last wins — an install could leave OTLP without
``InstrumentationScope``. Here the messages are built from this serialized
``FileDescriptorSet`` into a private :class:`~google.protobuf.descriptor_pool.DescriptorPool`:
the same wire format and JSON mapping, whatever else is installed or imported.

Made with (opentelemetry-proto 1.45.2 installed alone)::

    fds = descriptor_pb2.FileDescriptorSet()
    for module in (common_pb2, resource_pb2, trace_pb2, trace_service_pb2):
        module.DESCRIPTOR.CopyToProto(fds.file.add())
    base64.b64encode(fds.SerializeToString())
"""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "AnyValue",
    "ExportTraceServiceRequest",
    "ExportTraceServiceResponse",
    "KeyValue",
    "ResourceSpans",
    "Span",
]

_DESCRIPTORS = (
    "CugHCipvcGVudGVsZW1ldHJ5L3Byb3RvL2NvbW1vbi92MS9jb21tb24ucHJvdG8SHW9wZW50ZWxlbWV0cnkucHJv"
    "dG8uY29tbW9uLnYxIq0CCghBbnlWYWx1ZRIWCgxzdHJpbmdfdmFsdWUYASABKAlIABIUCgpib29sX3ZhbHVlGAIg"
    "ASgISAASEwoJaW50X3ZhbHVlGAMgASgDSAASFgoMZG91YmxlX3ZhbHVlGAQgASgBSAASQAoLYXJyYXlfdmFsdWUY"
    "BSABKAsyKS5vcGVudGVsZW1ldHJ5LnByb3RvLmNvbW1vbi52MS5BcnJheVZhbHVlSAASQwoMa3ZsaXN0X3ZhbHVl"
    "GAYgASgLMisub3BlbnRlbGVtZXRyeS5wcm90by5jb21tb24udjEuS2V5VmFsdWVMaXN0SAASFQoLYnl0ZXNfdmFs"
    "dWUYByABKAxIABIfChVzdHJpbmdfdmFsdWVfc3RyaW5kZXgYCCABKAVIAEIHCgV2YWx1ZSJFCgpBcnJheVZhbHVl"
    "EjcKBnZhbHVlcxgBIAMoCzInLm9wZW50ZWxlbWV0cnkucHJvdG8uY29tbW9uLnYxLkFueVZhbHVlIkcKDEtleVZh"
    "bHVlTGlzdBI3CgZ2YWx1ZXMYASADKAsyJy5vcGVudGVsZW1ldHJ5LnByb3RvLmNvbW1vbi52MS5LZXlWYWx1ZSJl"
    "CghLZXlWYWx1ZRILCgNrZXkYASABKAkSNgoFdmFsdWUYAiABKAsyJy5vcGVudGVsZW1ldHJ5LnByb3RvLmNvbW1v"
    "bi52MS5BbnlWYWx1ZRIUCgxrZXlfc3RyaW5kZXgYAyABKAUilAEKFEluc3RydW1lbnRhdGlvblNjb3BlEgwKBG5h"
    "bWUYASABKAkSDwoHdmVyc2lvbhgCIAEoCRI7CgphdHRyaWJ1dGVzGAMgAygLMicub3BlbnRlbGVtZXRyeS5wcm90"
    "by5jb21tb24udjEuS2V5VmFsdWUSIAoYZHJvcHBlZF9hdHRyaWJ1dGVzX2NvdW50GAQgASgNIlgKCUVudGl0eVJl"
    "ZhISCgpzY2hlbWFfdXJsGAEgASgJEgwKBHR5cGUYAiABKAkSDwoHaWRfa2V5cxgDIAMoCRIYChBkZXNjcmlwdGlv"
    "bl9rZXlzGAQgAygJQnsKIGlvLm9wZW50ZWxlbWV0cnkucHJvdG8uY29tbW9uLnYxQgtDb21tb25Qcm90b1ABWihn"
    "by5vcGVudGVsZW1ldHJ5LmlvL3Byb3RvL290bHAvY29tbW9uL3YxqgIdT3BlblRlbGVtZXRyeS5Qcm90by5Db21t"
    "b24uVjFiBnByb3RvMwq2Awoub3BlbnRlbGVtZXRyeS9wcm90by9yZXNvdXJjZS92MS9yZXNvdXJjZS5wcm90bxIf"
    "b3BlbnRlbGVtZXRyeS5wcm90by5yZXNvdXJjZS52MRoqb3BlbnRlbGVtZXRyeS9wcm90by9jb21tb24vdjEvY29t"
    "bW9uLnByb3RvIqgBCghSZXNvdXJjZRI7CgphdHRyaWJ1dGVzGAEgAygLMicub3BlbnRlbGVtZXRyeS5wcm90by5j"
    "b21tb24udjEuS2V5VmFsdWUSIAoYZHJvcHBlZF9hdHRyaWJ1dGVzX2NvdW50GAIgASgNEj0KC2VudGl0eV9yZWZz"
    "GAMgAygLMigub3BlbnRlbGVtZXRyeS5wcm90by5jb21tb24udjEuRW50aXR5UmVmQoMBCiJpby5vcGVudGVsZW1l"
    "dHJ5LnByb3RvLnJlc291cmNlLnYxQg1SZXNvdXJjZVByb3RvUAFaKmdvLm9wZW50ZWxlbWV0cnkuaW8vcHJvdG8v"
    "b3RscC9yZXNvdXJjZS92MaoCH09wZW5UZWxlbWV0cnkuUHJvdG8uUmVzb3VyY2UuVjFiBnByb3RvMwqTEAoob3Bl"
    "bnRlbGVtZXRyeS9wcm90by90cmFjZS92MS90cmFjZS5wcm90bxIcb3BlbnRlbGVtZXRyeS5wcm90by50cmFjZS52"
    "MRoqb3BlbnRlbGVtZXRyeS9wcm90by9jb21tb24vdjEvY29tbW9uLnByb3RvGi5vcGVudGVsZW1ldHJ5L3Byb3Rv"
    "L3Jlc291cmNlL3YxL3Jlc291cmNlLnByb3RvIlEKClRyYWNlc0RhdGESQwoOcmVzb3VyY2Vfc3BhbnMYASADKAsy"
    "Ky5vcGVudGVsZW1ldHJ5LnByb3RvLnRyYWNlLnYxLlJlc291cmNlU3BhbnMipwEKDVJlc291cmNlU3BhbnMSOwoI"
    "cmVzb3VyY2UYASABKAsyKS5vcGVudGVsZW1ldHJ5LnByb3RvLnJlc291cmNlLnYxLlJlc291cmNlEj0KC3Njb3Bl"
    "X3NwYW5zGAIgAygLMigub3BlbnRlbGVtZXRyeS5wcm90by50cmFjZS52MS5TY29wZVNwYW5zEhIKCnNjaGVtYV91"
    "cmwYAyABKAlKBgjoBxDpByKXAQoKU2NvcGVTcGFucxJCCgVzY29wZRgBIAEoCzIzLm9wZW50ZWxlbWV0cnkucHJv"
    "dG8uY29tbW9uLnYxLkluc3RydW1lbnRhdGlvblNjb3BlEjEKBXNwYW5zGAIgAygLMiIub3BlbnRlbGVtZXRyeS5w"
    "cm90by50cmFjZS52MS5TcGFuEhIKCnNjaGVtYV91cmwYAyABKAkihAgKBFNwYW4SEAoIdHJhY2VfaWQYASABKAwS"
    "DwoHc3Bhbl9pZBgCIAEoDBITCgt0cmFjZV9zdGF0ZRgDIAEoCRIWCg5wYXJlbnRfc3Bhbl9pZBgEIAEoDBINCgVm"
    "bGFncxgQIAEoBxIMCgRuYW1lGAUgASgJEjkKBGtpbmQYBiABKA4yKy5vcGVudGVsZW1ldHJ5LnByb3RvLnRyYWNl"
    "LnYxLlNwYW4uU3BhbktpbmQSHAoUc3RhcnRfdGltZV91bml4X25hbm8YByABKAYSGgoSZW5kX3RpbWVfdW5peF9u"
    "YW5vGAggASgGEjsKCmF0dHJpYnV0ZXMYCSADKAsyJy5vcGVudGVsZW1ldHJ5LnByb3RvLmNvbW1vbi52MS5LZXlW"
    "YWx1ZRIgChhkcm9wcGVkX2F0dHJpYnV0ZXNfY291bnQYCiABKA0SOAoGZXZlbnRzGAsgAygLMigub3BlbnRlbGVt"
    "ZXRyeS5wcm90by50cmFjZS52MS5TcGFuLkV2ZW50EhwKFGRyb3BwZWRfZXZlbnRzX2NvdW50GAwgASgNEjYKBWxp"
    "bmtzGA0gAygLMicub3BlbnRlbGVtZXRyeS5wcm90by50cmFjZS52MS5TcGFuLkxpbmsSGwoTZHJvcHBlZF9saW5r"
    "c19jb3VudBgOIAEoDRI0CgZzdGF0dXMYDyABKAsyJC5vcGVudGVsZW1ldHJ5LnByb3RvLnRyYWNlLnYxLlN0YXR1"
    "cxqMAQoFRXZlbnQSFgoOdGltZV91bml4X25hbm8YASABKAYSDAoEbmFtZRgCIAEoCRI7CgphdHRyaWJ1dGVzGAMg"
    "AygLMicub3BlbnRlbGVtZXRyeS5wcm90by5jb21tb24udjEuS2V5VmFsdWUSIAoYZHJvcHBlZF9hdHRyaWJ1dGVz"
    "X2NvdW50GAQgASgNGqwBCgRMaW5rEhAKCHRyYWNlX2lkGAEgASgMEg8KB3NwYW5faWQYAiABKAwSEwoLdHJhY2Vf"
    "c3RhdGUYAyABKAkSOwoKYXR0cmlidXRlcxgEIAMoCzInLm9wZW50ZWxlbWV0cnkucHJvdG8uY29tbW9uLnYxLktl"
    "eVZhbHVlEiAKGGRyb3BwZWRfYXR0cmlidXRlc19jb3VudBgFIAEoDRINCgVmbGFncxgGIAEoByKZAQoIU3Bhbktp"
    "bmQSGQoVU1BBTl9LSU5EX1VOU1BFQ0lGSUVEEAASFgoSU1BBTl9LSU5EX0lOVEVSTkFMEAESFAoQU1BBTl9LSU5E"
    "X1NFUlZFUhACEhQKEFNQQU5fS0lORF9DTElFTlQQAxIWChJTUEFOX0tJTkRfUFJPRFVDRVIQBBIWChJTUEFOX0tJ"
    "TkRfQ09OU1VNRVIQBSKuAQoGU3RhdHVzEg8KB21lc3NhZ2UYAiABKAkSPQoEY29kZRgDIAEoDjIvLm9wZW50ZWxl"
    "bWV0cnkucHJvdG8udHJhY2UudjEuU3RhdHVzLlN0YXR1c0NvZGUiTgoKU3RhdHVzQ29kZRIVChFTVEFUVVNfQ09E"
    "RV9VTlNFVBAAEhIKDlNUQVRVU19DT0RFX09LEAESFQoRU1RBVFVTX0NPREVfRVJST1IQAkoECAEQAiqcAQoJU3Bh"
    "bkZsYWdzEhkKFVNQQU5fRkxBR1NfRE9fTk9UX1VTRRAAEiAKG1NQQU5fRkxBR1NfVFJBQ0VfRkxBR1NfTUFTSxD/"
    "ARIqCiVTUEFOX0ZMQUdTX0NPTlRFWFRfSEFTX0lTX1JFTU9URV9NQVNLEIACEiYKIVNQQU5fRkxBR1NfQ09OVEVY"
    "VF9JU19SRU1PVEVfTUFTSxCABEJ3Ch9pby5vcGVudGVsZW1ldHJ5LnByb3RvLnRyYWNlLnYxQgpUcmFjZVByb3Rv"
    "UAFaJ2dvLm9wZW50ZWxlbWV0cnkuaW8vcHJvdG8vb3RscC90cmFjZS92MaoCHE9wZW5UZWxlbWV0cnkuUHJvdG8u"
    "VHJhY2UuVjFiBnByb3RvMwqCBgo6b3BlbnRlbGVtZXRyeS9wcm90by9jb2xsZWN0b3IvdHJhY2UvdjEvdHJhY2Vf"
    "c2VydmljZS5wcm90bxImb3BlbnRlbGVtZXRyeS5wcm90by5jb2xsZWN0b3IudHJhY2UudjEaKG9wZW50ZWxlbWV0"
    "cnkvcHJvdG8vdHJhY2UvdjEvdHJhY2UucHJvdG8iYAoZRXhwb3J0VHJhY2VTZXJ2aWNlUmVxdWVzdBJDCg5yZXNv"
    "dXJjZV9zcGFucxgBIAMoCzIrLm9wZW50ZWxlbWV0cnkucHJvdG8udHJhY2UudjEuUmVzb3VyY2VTcGFucyJ4ChpF"
    "eHBvcnRUcmFjZVNlcnZpY2VSZXNwb25zZRJaCg9wYXJ0aWFsX3N1Y2Nlc3MYASABKAsyQS5vcGVudGVsZW1ldHJ5"
    "LnByb3RvLmNvbGxlY3Rvci50cmFjZS52MS5FeHBvcnRUcmFjZVBhcnRpYWxTdWNjZXNzIkoKGUV4cG9ydFRyYWNl"
    "UGFydGlhbFN1Y2Nlc3MSFgoOcmVqZWN0ZWRfc3BhbnMYASABKAMSFQoNZXJyb3JfbWVzc2FnZRgCIAEoCTKiAQoM"
    "VHJhY2VTZXJ2aWNlEpEBCgZFeHBvcnQSQS5vcGVudGVsZW1ldHJ5LnByb3RvLmNvbGxlY3Rvci50cmFjZS52MS5F"
    "eHBvcnRUcmFjZVNlcnZpY2VSZXF1ZXN0GkIub3BlbnRlbGVtZXRyeS5wcm90by5jb2xsZWN0b3IudHJhY2UudjEu"
    "RXhwb3J0VHJhY2VTZXJ2aWNlUmVzcG9uc2UiAEKcAQopaW8ub3BlbnRlbGVtZXRyeS5wcm90by5jb2xsZWN0b3Iu"
    "dHJhY2UudjFCEVRyYWNlU2VydmljZVByb3RvUAFaMWdvLm9wZW50ZWxlbWV0cnkuaW8vcHJvdG8vb3RscC9jb2xs"
    "ZWN0b3IvdHJhY2UvdjGqAiZPcGVuVGVsZW1ldHJ5LlByb3RvLkNvbGxlY3Rvci5UcmFjZS5WMWIGcHJvdG8z"
)


def _pool() -> descriptor_pool.DescriptorPool:
    files = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode("".join(_DESCRIPTORS)))
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


_POOL = _pool()


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(name))


AnyValue = _message("opentelemetry.proto.common.v1.AnyValue")
KeyValue = _message("opentelemetry.proto.common.v1.KeyValue")
ResourceSpans = _message("opentelemetry.proto.trace.v1.ResourceSpans")
Span = _message("opentelemetry.proto.trace.v1.Span")
ExportTraceServiceRequest = _message(
    "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest"
)
ExportTraceServiceResponse = _message(
    "opentelemetry.proto.collector.trace.v1.ExportTraceServiceResponse"
)
