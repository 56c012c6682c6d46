"""``/v1/brands``: brand kits (palette, font, logo, tone, words never to use) that campaigns name by id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Path, Response, UploadFile

from .. import brands as service
from ..deps import SessionDep, StoreDep, TenantDep
from ..problems import problem_responses

router = APIRouter(prefix="/v1/brands", tags=["brands"], responses=problem_responses(401, 422))

BrandId = Annotated[str, Path(max_length=64)]


@router.post("", status_code=201, response_model=service.BrandView, responses=problem_responses(409),
             summary="Create a brand kit")
def create_brand(body: service.BrandCreate, principal: TenantDep, session: SessionDep) -> service.BrandView:
    return service.create(session, tenant_id=principal.tenant_id, body=body)


@router.get("", response_model=service.BrandList, summary="List brand kits")
def list_brands(principal: TenantDep, session: SessionDep) -> service.BrandList:
    return service.list_brands(session, tenant_id=principal.tenant_id)


@router.get("/{brand_id}", response_model=service.BrandView, responses=problem_responses(404), summary="Read a brand kit")
def get_brand(brand_id: BrandId, principal: TenantDep, session: SessionDep) -> service.BrandView:
    return service.brand_view(service.get_brand(session, tenant_id=principal.tenant_id, brand_id=brand_id))


@router.patch("/{brand_id}", response_model=service.BrandView, responses=problem_responses(404, 409),
              summary="Change a brand kit (jobs already submitted keep the fields they were given)")
def update_brand(brand_id: BrandId, body: service.BrandUpdate, principal: TenantDep,
                 session: SessionDep) -> service.BrandView:
    return service.update(session, tenant_id=principal.tenant_id, brand_id=brand_id, body=body)


@router.delete("/{brand_id}", status_code=204, response_class=Response, responses=problem_responses(404),
               summary="Delete a brand kit")
def delete_brand(brand_id: BrandId, principal: TenantDep, session: SessionDep, store: StoreDep) -> Response:
    service.delete(session, store, tenant_id=principal.tenant_id, brand_id=brand_id)
    return Response(status_code=204)


@router.post("/{brand_id}/font", response_model=service.BrandView, responses=problem_responses(404, 413, 415),
             summary="Upload the kit's font (TrueType .ttf or OpenType .otf)")
def upload_font(brand_id: BrandId, file: Annotated[UploadFile, File(description="A .ttf or .otf font file.")],
                principal: TenantDep, session: SessionDep, store: StoreDep) -> service.BrandView:
    file.file.seek(0)
    data = file.file.read(service.MAX_FONT_BYTES + 1)
    return service.upload_font(session, store, tenant_id=principal.tenant_id, brand_id=brand_id, data=data,
                               filename=file.filename)
